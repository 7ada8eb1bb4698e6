"""The errors a job ends with, one base class, one kind per exit code of the CLI.

``str(error)`` is the one line the CLI prints after ``error:``: what is wrong and what to
do. The library raises them; only the CLI turns them into exit codes
(``error.exit_code``). Anything else that escapes a job is a bug, reported as such.
"""


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
