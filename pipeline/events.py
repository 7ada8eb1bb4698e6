"""Progress as typed events: what a program hears from a running job.

The job graphs send them and know nothing of terminals; the Python API hands them to
``upscale(..., progress=callable)``, and the CLI draws its bars from the same events
(``progress_bar.BarRenderer``). Without a listener nothing is sent, and the library only
logs through :mod:`logging`.

A job sends, in this order: :class:`StageStarted` as each stage begins (image:
``ingest``, ``upscale``, ``publish``; video: ``upscale``, then ``assemble``), one
:class:`UnitsDone` after each unit of that stage (a band, a region, a publish step), for
a video :class:`SegmentsEncoded` when its upscale starts and after each encoded segment,
and :class:`WarningLogged` for each warning the driver logs. A batch adds its own
``batch`` stage (the regions of every item; ``output`` is ``""``) and one
:class:`ItemFinished` per item. Events arrive on the thread that runs the job; a
listener that raises ends the job with its exception (the store stays resumable), except
for a warning, whose exception ``logging`` reports as a handler's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """Base of every event. ``output``: the job's output path ("" for a batch's own)."""

    output: str


@dataclass(frozen=True)
class StageStarted(Event):
    """A stage began: ``total`` units of ``unit``, ``done`` of them resumed from the store."""

    stage: str
    total: int
    done: int
    unit: str


@dataclass(frozen=True)
class UnitsDone(Event):
    """``done`` of ``total`` units of ``stage`` are finished (resumed ones included).
    ``rate_per_s``: units per second run in this call since the stage started; ``eta_s``:
    the seconds left at that rate (None until a unit has run)."""

    stage: str
    done: int
    total: int
    unit: str
    rate_per_s: float | None
    eta_s: float | None


@dataclass(frozen=True)
class SegmentsEncoded(Event):
    """Video: ``encoded`` of ``total`` segments are final files, holding
    ``frames_encoded`` frames (sent when the upscale starts and after each segment)."""

    encoded: int
    total: int
    frames_encoded: int


@dataclass(frozen=True)
class WarningLogged(Event):
    """The driver logged a warning (a retried region, a requeued call, a stop request)."""

    message: str


@dataclass(frozen=True)
class ItemFinished(Event):
    """A batch item ended: ``status`` is done, skipped, failed, terminated, cancelled or
    interrupted; ``error`` is its one-line reason."""

    input: str
    status: str
    error: str | None


Listener = Callable[[Event], None]


class StageMeter:
    """One stage of one job: sends :class:`StageStarted` now and :class:`UnitsDone` on
    each :meth:`advance`, with the rate and ETA of the units run since it started."""

    def __init__(
        self, listener: Listener | None, output: str, stage: str, total: int, unit: str, done: int
    ) -> None:
        self.listener, self.output, self.stage, self.unit = listener, output, stage, unit
        self.total, self.done, self.at_start = total, done, done
        self.t0 = time.monotonic()
        if listener is not None:
            listener(StageStarted(output, stage, total, done, unit))

    def advance(self, count: int = 1, resumed: bool = False) -> None:
        """``count`` more units are done (``resumed``: found done, not run here)."""
        self.done += count
        if resumed:
            self.at_start += count
        if self.listener is None:
            return
        run = self.done - self.at_start
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        rate = run / elapsed if run > 0 else None
        eta = max(self.total - self.done, 0) / rate if rate else None
        self.listener(
            UnitsDone(self.output, self.stage, self.done, self.total, self.unit, rate, eta)
        )


class JobEvents:
    """The events of one job (a no-op without a listener)."""

    def __init__(self, listener: Listener | None, output: str) -> None:
        self.listener, self.output = listener, output

    def stage(self, name: str, total: int, unit: str, done: int = 0) -> StageMeter:
        return StageMeter(self.listener, self.output, name, total, unit, done)

    def segments(self, encoded: int, total: int, frames_encoded: int) -> None:
        if self.listener is not None:
            self.listener(SegmentsEncoded(self.output, encoded, total, frames_encoded))
