"""What the driver sends to workers: plain data, importable on both sides.

Tasks carry addresses, never pixels: a region of one frame in the store's layout, or the
frames whose degradation scores to estimate. ``JobRef`` is what a worker needs to serve
one job's tasks; workers are shared by every job of a batch that uses the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import JobConfig


@dataclass(frozen=True)
class RegionTask:
    """The address of one unit of work: a region of one frame, in the store's layout."""

    frame: int
    row: int
    col: int


@dataclass(frozen=True)
class EstimateTask:
    """Estimate the degradation scores of these frames (returns (n, 2) float32)."""

    frames: tuple[int, ...]


@dataclass(frozen=True)
class JobRef:
    """A job as its region workers see it: its store and tiling."""

    store_url: str
    config: JobConfig
    size_multiple: int
    context_px: int


def describe(task: RegionTask | EstimateTask) -> str:
    """How messages name a task (the frame and region a user can look at)."""
    if isinstance(task, RegionTask):
        return f"frame {task.frame} region (row {task.row}, col {task.col})"
    return f"degradation estimate of frames {task.frames[0]}..{task.frames[-1]}"
