"""Reaper: kills a local Ray's processes when the driver that started them dies.

After SIGKILL of a driver, Ray's agents (dashboard agent, runtime-env agent) and
sometimes its raylet and workers stay alive indefinitely. ``start_reaper`` launches this
module as a separate session that keeps recording the driver's descendants and, once the
driver is gone, kills every recorded process that is still the same process.

    python -m pipeline.runner.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

POLL_S = 0.5


def _snapshot(proc: psutil.Process, seen: dict[int, float]) -> None:
    try:
        for child in proc.children(recursive=True):
            try:
                seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                continue
    except psutil.Error:
        pass


def _kill_recorded(seen: dict[int, float]) -> None:
    # Descendants of recorded processes that appeared after the last snapshot too.
    for pid, created in list(seen.items()):
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:
                _snapshot(proc, seen)
        except psutil.Error:
            continue
    for pid, created in seen.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:  # not a recycled pid
                proc.kill()
        except psutil.Error:
            continue


def watch(driver_pid: int) -> None:
    try:
        driver = psutil.Process(driver_pid)
        driver_created = driver.create_time()
    except psutil.Error:
        return
    seen: dict[int, float] = {}
    me = os.getpid()
    while True:
        try:
            alive = driver.is_running() and driver.create_time() == driver_created
            alive = alive and driver.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        if not alive:
            _kill_recorded(seen)
            return
        _snapshot(driver, seen)
        seen.pop(me, None)
        time.sleep(POLL_S)


def start_reaper() -> subprocess.Popen:
    """Launch the reaper for this process, detached so a kill of our group spares it."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.runner.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        cwd=Path(__file__).resolve().parents[2],  # the project root (pipeline/runner/..)
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]))
