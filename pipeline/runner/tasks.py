"""What the driver sends to workers: plain data, importable on both sides.

Tasks carry addresses, never pixels: a region of one frame in the store's layout, or the
frames whose degradation scores to estimate. A :class:`JobContext` is what every task of
one job shares (the store, the input's description with every frame's pts, the plan):
an executor sends it to the workers once per job (one object-store copy under Ray) and
each call carries only its small task. ``JobRef`` is the region workers' context;
workers are shared by every job of a batch that uses the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import JobConfig

if TYPE_CHECKING:
    import numpy as np


class JobContext:
    """Marks a job's shared context: sent once per job, not with each call."""

    __slots__ = ()


@dataclass(frozen=True)
class RegionTask:
    """The address of one unit of work: a region of one frame, in the store's layout."""

    frame: int
    row: int
    col: int


@dataclass(frozen=True)
class EstimateTask:
    """Estimate the degradation scores of these frames (returns :class:`Estimates`)."""

    frames: tuple[int, ...]


@dataclass(frozen=True)
class Estimates:
    """What an estimate call returns: its frames' degradation ``scores`` (n, 2) float32,
    and their shot ``signatures`` (n, K) float32 when the job asked for them
    (``JobRef.signatures``), else None."""

    scores: np.ndarray
    signatures: np.ndarray | None = None


@dataclass(frozen=True)
class JobRef(JobContext):
    """A job as its region workers see it: its store and tiling, and whether its
    estimates return shot signatures too (the driver decided the job's degradation mode
    is ``shot``: ``pipeline.config.degradation_mode``, called on the driver only)."""

    store_url: str
    config: JobConfig
    size_multiple: int
    context_px: int
    signatures: bool = False


def describe(task: RegionTask | EstimateTask) -> str:
    """How messages name a task (the frame and region a user can look at)."""
    if isinstance(task, RegionTask):
        return f"frame {task.frame} region (row {task.row}, col {task.col})"
    return f"degradation estimate of frames {task.frames[0]}..{task.frames[-1]}"
