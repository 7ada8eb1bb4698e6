"""The one exception type the CLI prints as a single line without a traceback."""


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
    text = str(getattr(exc, "cause", None) or exc)
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
