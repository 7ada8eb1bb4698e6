"""The one exception type the CLI prints as a single line without a traceback."""


class UserError(Exception):
    """Bad input, config or environment: the message says what is wrong and what to do."""

    exit_code = 2


class JobFailed(Exception):
    """A job stopped after its retries ran out; the message names the frame and region."""

    exit_code = 3


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
