"""Graceful stop on SIGTERM (preemption, Kubernetes eviction, ``ray job stop``) or on a
:class:`CancelToken` (the Python API, from another thread).

The CLI installs the handler; it only sets ``STOP``. A token stops only the jobs it was
given to, and in the same way. Every driver loop waits in short
slices and checks the flag: the region pool stops handing out work, lets the regions in
flight finish (their ``done`` flags are written) for up to ``run.term_grace_s``, and then
every job raises :class:`Terminated`. Temporary outputs are removed, stores stay
resumable, and the CLI exits with ``Terminated.exit_code``. Ctrl-C (SIGINT) stops at
once instead: the loop ends every running job as ``interrupted`` and the CLI exits 130.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from pipeline.errors import Cancelled, Interrupted, Terminated

log = logging.getLogger(__name__)

STOP = threading.Event()
_stop_at: list[float] = []
STOPPED = "stopped by SIGTERM; the job store is kept: run the same command to resume"
CANCELLED = "cancelled; the job store is kept: run the same job again to resume"

__all__ = ["CancelToken", "Cancelled", "Interrupted", "Terminated", "STOP", "request_stop"]


class CancelToken:
    """Stops the jobs it is given to (``upscale(..., cancel=token)``), from any thread.

    :meth:`cancel` returns at once; the running call then stops as after SIGTERM: no new
    work starts, the regions in flight finish for up to ``run.term_grace_s`` (their flags
    are written), temporaries are removed, and the call raises
    :class:`pipeline.Cancelled`. The store stays resumable: the same call again goes on
    from where it stopped. A token stays cancelled; use a new one for the next run.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._at: float | None = None

    def cancel(self) -> None:
        """Ask the jobs using this token to stop (thread-safe, idempotent)."""
        if not self._event.is_set():
            self._at = time.monotonic()
            log.warning("cancel requested: finishing the regions in flight, then stopping")
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled (or ``timeout`` seconds); True once cancelled."""
        return self._event.wait(timeout)

    def stopped_for_s(self) -> float:
        return time.monotonic() - self._at if self._at is not None else 0.0


def stop_requested(cancel: CancelToken | None = None) -> bool:
    """SIGTERM was received, or ``cancel`` was cancelled."""
    return STOP.is_set() or (cancel is not None and cancel.cancelled)


def stop_error(cancel: CancelToken | None = None) -> Interrupted:
    """The error a job stopped by a stop request ends with."""
    if STOP.is_set() or cancel is None:
        return Terminated(STOPPED)
    return Cancelled(CANCELLED)


def request_stop(reason: str = "stop requested") -> None:
    if not STOP.is_set():
        _stop_at.append(time.monotonic())
        log.warning("%s: finishing the regions in flight, then stopping", reason)
    STOP.set()


def stopped_for_s(cancel: CancelToken | None = None) -> float:
    """Seconds since the first stop request (SIGTERM or ``cancel``)."""
    sigterm = time.monotonic() - _stop_at[0] if _stop_at else 0.0
    return max(sigterm, cancel.stopped_for_s() if cancel is not None else 0.0)


def check(cancel: CancelToken | None = None) -> None:
    """Raise :class:`Terminated` (or :class:`Cancelled`) once a stop was requested."""
    if stop_requested(cancel):
        raise stop_error(cancel)


_installed: list[bool] = []
_interrupts: list[float] = []
AGAIN = (
    b"\ninterrupted again: still ending the job (its store stays resumable); "
    b"a third Ctrl-C quits at once\n"
)


def _handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    request_stop("SIGTERM")


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """Ctrl-C: the first raises KeyboardInterrupt (the jobs end as ``interrupted``, the
    CLI exits 130); a second only says so, because a KeyboardInterrupt raised inside the
    tear-down (a lock's release, Ray's shutdown, joining threads) is what ended runs in
    ``RuntimeError: release unlocked lock``; a third exits at once (the store is
    resumable whenever the process dies: a region's flag follows its pixels)."""
    _interrupts.append(time.monotonic())
    if len(_interrupts) == 1:
        raise KeyboardInterrupt
    if len(_interrupts) == 2:
        os.write(2, AGAIN)  # not sys.stderr: it may be mid-write in the main thread
        return
    os._exit(130)


def interrupted() -> bool:
    return bool(_interrupts)


def install_sigterm_handler() -> None:
    """Main thread only: SIGTERM stops gracefully (a second one does not kill harder:
    the grace period holds), SIGINT as :func:`_interrupt` says."""
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _interrupt)
    _installed.append(True)


def sigterm_handler() -> object:
    """This process's SIGTERM handler now (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGTERM)


def reinstall_after_ray_init(previous: object = None) -> None:
    """``ray.init`` sets its own SIGTERM handler (exit at once) in the driver; put ours
    back if the CLI installed it, else the program's own (``previous``: a script that
    cancels a token on SIGTERM keeps doing so)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if _installed:
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _interrupt)
    elif callable(previous):
        signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]
