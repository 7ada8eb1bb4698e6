"""The exception types the CLI prints as a single line without a traceback."""

import re


class UserError(Exception):
    """Bad input, config or environment: the message says what is wrong and what to do."""

    exit_code = 2


class JobFailed(Exception):
    """A job stopped after its retries ran out; the message names the frame and region."""

    exit_code = 3


def damaged(exc: BaseException) -> bool:
    """Whether a task's error (raised here or wrapped by Ray) is ``DamagedInput``."""
    return isinstance(exc, DamagedInput) or isinstance(getattr(exc, "cause", None), DamagedInput)


def cause(exc: BaseException) -> str:
    """The last meaningful line of a (Ray-wrapped) exception; one line for a dead actor."""
    import sys

    ray = sys.modules.get("ray")  # no Ray errors without Ray (the local runner)
    text = plain(str(getattr(exc, "cause", None) or exc))
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    if (
        ray is not None
        and isinstance(exc, ray.exceptions.RayActorError)
        and not isinstance(exc, ray.exceptions.RayTaskError)
    ):
        if exc.actor_init_failed:
            return f"its worker could not start: {last}"
        if exc.preempted:
            return "its worker's node was preempted"
        return "its worker process died (killed, crashed or lost with its node)"
    return last


class DamagedInput(Exception):
    """An input's bytes failed to decode (a codec or TIFF structure error) in a worker.
    Only this is reported as a damaged file; any other failure is a bug of ours."""


def is_decode_error(exc: BaseException, pillow: bool = False) -> bool:
    """Whether ``exc`` is a file's bytes failing to decode: a codec error (imagecodecs,
    zlib), tifffile's own errors (a corrupted tile or strip), a short read; with
    ``pillow``, also Pillow's errors for broken PNG/JPEG data (OSError, SyntaxError)."""
    import struct
    import zlib

    kinds: tuple[type[BaseException], ...] = (zlib.error, struct.error, EOFError, OSError)
    if pillow:
        kinds += (SyntaxError,)
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False  # the file went away or cannot be opened: not its bytes
    if isinstance(exc, kinds):
        return True
    return any(t.__module__.split(".")[0] in ("imagecodecs", "tifffile") for t in type(exc).__mro__)


class TaskBug(Exception):
    """A task failed in a way no input explains: a bug, said so in one plain line."""

    exit_code = 1


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """``text`` without terminal colour codes (Ray colours the tracebacks it wraps)."""
    return _ANSI.sub("", text)


def unexpected(what: str, exc: BaseException) -> BaseException:
    """The error that ends a job when ``what`` (a task) raised ``exc``: a user error or
    job failure raised inside the task as it is; anything else as a ``TaskBug`` whose
    message names the task and the exception, with ``exc`` chained for --debug."""
    original = getattr(exc, "cause", None) or exc
    if isinstance(original, (UserError, JobFailed)):
        return original
    bug = TaskBug(
        f"the {what} failed unexpectedly ({type(original).__name__}: {cause(exc)}); this is a "
        "bug: rerun with --debug for the traceback, and please report it"
    )
    bug.__cause__ = exc
    return bug
