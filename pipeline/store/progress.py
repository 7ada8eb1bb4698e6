"""A job's progress, kept in its store so that ``status`` can read it from anywhere.

The driver rewrites ``progress.json`` at the store's root every few seconds and at every
change of state (one small object: an atomic rename on a local disk, one PUT on object
storage). ``status`` combines it with the store's ``done`` flags, which are the truth
for regions, so a driver that died still leaves an accurate picture: how far it got,
its last error, and since when nothing has moved.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from pipeline.store.jobstore import write_progress

log = logging.getLogger(__name__)
WRITE_EVERY_S = 2.0


class Progress:
    """The driver's recorder for one job (thread-safe enough: one writer per job)."""

    def __init__(
        self,
        store_url: str,
        input_path: str,
        output_path: str,
        regions_total: int,
        regions_done: int,
        frames_total: int,
        on_regions: Callable[[int, bool], None] | None = None,
    ) -> None:
        """``on_regions(n, resumed)`` hears of regions done: those resumed from the
        store at once (``resumed=True``), then each one run."""
        self.store_url = store_url
        self.on_regions = on_regions
        self.record: dict[str, Any] = {
            "status": "running",
            "stage": "start",
            "input": input_path,
            "output": output_path,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": time.time(),
            "updated_at": time.time(),
            "regions_total": regions_total,
            "regions_done": regions_done,
            "regions_done_at_start": regions_done,
            "frames_total": frames_total,
            "frames_encoded": 0,
            "regions_per_s": None,
            "eta_s": None,
            "error": None,
        }
        self._first_region_t: float | None = None
        self._last_write = 0.0
        self.flush()
        if on_regions is not None and regions_done:
            on_regions(regions_done, True)

    def stage(self, name: str) -> None:
        self.record["stage"] = name
        if name == "upscale" and self._first_region_t is None:
            self._first_region_t = time.time()
        self.flush()

    def regions_done(self, count: int = 1) -> None:
        r = self.record
        r["regions_done"] += count
        if self.on_regions is not None:
            self.on_regions(count, False)
        if self._first_region_t is not None:
            run = r["regions_done"] - r["regions_done_at_start"]
            elapsed = max(time.time() - self._first_region_t, 1e-6)
            rate = run / elapsed
            r["regions_per_s"] = rate
            left = r["regions_total"] - r["regions_done"]
            r["eta_s"] = left / rate if rate > 0 else None
        self.maybe_flush()

    def frames_encoded(self, frames: int) -> None:
        self.record["frames_encoded"] = frames
        self.maybe_flush()

    def segments(self, encoded: int, total: int) -> None:
        self.record["segments_encoded"], self.record["segments_total"] = encoded, total
        self.maybe_flush()

    def scratch(self, nbytes: int) -> None:
        """Bytes the job store holds (frames in flight plus encoded segments)."""
        self.record["scratch_bytes"] = nbytes
        self.record["scratch_peak_bytes"] = max(nbytes, self.record.get("scratch_peak_bytes", 0))
        self.maybe_flush()

    def model_busy(self, fraction: float | None) -> None:
        """The share of the region workers' time spent in the model (``ModelBusy``)."""
        self.record["model_busy"] = fraction
        self.maybe_flush()

    def finish(self, status: str, error: str | None = None) -> None:
        self.record.update(status=status, error=error, eta_s=None)
        self.flush()

    def maybe_flush(self) -> None:
        if time.time() - self._last_write >= WRITE_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.record["updated_at"] = time.time()
        self._last_write = time.time()
        try:
            write_progress(self.store_url, self.record)
        except Exception as exc:  # noqa: BLE001 - advisory: never fail a job over it
            log.debug("could not write progress to %s: %s", self.store_url, exc)


def driver_alive(record: dict[str, Any]) -> bool | None:
    """Whether the recorded driver process still runs (None: on another host)."""
    if record.get("host") != socket.gethostname():
        return None
    import psutil

    pid = record.get("pid")
    return bool(pid) and psutil.pid_exists(int(pid))


class ModelBusy:
    """How much of its region workers' time a job kept the model busy.

    Each region result carries the worker that ran it, the seconds its model calls took
    and the wall clock when the region started and ended on that worker. A worker's busy
    share is its model seconds over the span from its first region's start to its last
    region's end; the job's is the sum of model seconds over the sum of spans. Below 100%
    the model waited: for its input (decode, the store), or for the blend and the write.
    """

    def __init__(self) -> None:
        self.workers: dict[str, list[float]] = {}  # worker -> [model_s, first start, last end]

    def record(self, result: Any) -> None:
        if not isinstance(result, dict) or result.get("started") is None:
            return
        worker = str(result.get("worker") or result.get("node") or "local")
        w = self.workers.setdefault(worker, [0.0, result["started"], result["ended"]])
        w[0] += float(result.get("model_s", 0.0))
        w[1], w[2] = min(w[1], result["started"]), max(w[2], result["ended"])

    def fraction(self) -> float | None:
        span = sum(end - start for _, start, end in self.workers.values())
        if span <= 0:
            return None
        return min(1.0, sum(model for model, _, _ in self.workers.values()) / span)

    def per_worker(self) -> dict[str, float]:
        return {k: min(1.0, m / max(e - s, 1e-9)) for k, (m, s, e) in self.workers.items()}
