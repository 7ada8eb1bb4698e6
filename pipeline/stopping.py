"""Graceful stop on SIGTERM (preemption, Kubernetes eviction, ``ray job stop``).

The CLI installs the handler; it only sets ``STOP``. Every driver loop waits in short
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

log = logging.getLogger(__name__)

STOP = threading.Event()
_stop_at: list[float] = []


class Terminated(Exception):
    """The job was stopped by SIGTERM; its store is resumable."""

    exit_code = 75  # EX_TEMPFAIL: a temporary condition, run the same command again


def request_stop(reason: str = "stop requested") -> None:
    if not STOP.is_set():
        _stop_at.append(time.monotonic())
        log.warning("%s: finishing the regions in flight, then stopping", reason)
    STOP.set()


def stopped_for_s() -> float:
    return time.monotonic() - _stop_at[0] if _stop_at else 0.0


def check() -> None:
    """Raise :class:`Terminated` once a stop was requested."""
    if STOP.is_set():
        raise Terminated("stopped by SIGTERM; the job store is kept: rerun to resume")


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


def reinstall_after_ray_init() -> None:
    """``ray.init`` sets its own SIGTERM handler (exit at once) in the driver; put ours
    back if the CLI installed it."""
    if _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _interrupt)
