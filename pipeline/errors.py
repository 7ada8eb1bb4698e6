"""The errors a job ends with, one base class, one kind per exit code of the CLI.

``str(error)`` is the one line the CLI prints after ``error:``: what is wrong and what to
do. The library raises them; only the CLI turns them into exit codes
(``error.exit_code``). Anything else that escapes a job is a bug, reported as such.
"""

import re


class Error(Exception):
    """Base of every error a job ends with; ``str(error)`` is its one-line message."""

    exit_code = 1


class UserError(Error):
    """Bad input, config or environment: the message says what is wrong and what to do.
    Raised before anything is written (exit code 2)."""

    exit_code = 2


class JobFailed(Error):
    """A region (or a batch item) failed after its retries ran out; the message names
    the frame and region. The job store is kept: a fixed rerun resumes (exit code 3)."""

    exit_code = 3


class Interrupted(Error):
    """The job was stopped before its end and its store is resumable: run the same job
    again to go on from where it stopped (exit code 75)."""

    exit_code = 75  # EX_TEMPFAIL: a temporary condition, run the same command again


class Terminated(Interrupted):
    """Stopped by SIGTERM (preemption, eviction, ``ray job stop``)."""


class Cancelled(Interrupted):
    """Stopped by :meth:`pipeline.CancelToken.cancel` (from another thread)."""


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


def reason(exc: BaseException) -> str:
    """Why a worker's call failed, for a message that names the call's address: the
    raised exception's type and ``cause`` ("ValueError: poison pixel in the input"), or
    the one line of a dead worker. Workers raise their plain cause; the driver adds
    where."""
    import sys

    text = cause(exc)
    ray = sys.modules.get("ray")
    if ray is not None and isinstance(exc, ray.exceptions.RayError):
        if not isinstance(exc, ray.exceptions.RayTaskError):
            return text  # the worker died: no exception of its own
        inner = getattr(exc, "cause", None)
        if inner is None:
            return text  # not deserialised: Ray's text, whose last line names the type
    else:
        inner = exc
    name = type(inner).__name__
    return text if text.startswith(f"{name}:") else f"{name}: {text}"


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


class TaskBug(Error):
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
