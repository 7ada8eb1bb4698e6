"""Estimate stage bookkeeping: per-frame degradation scores, kept in the job store.

S3Diff is conditioned on two degradation scores per frame, estimated once per frame
(by the workers, from a fixed set of LR crops) and given to every tile of the frame:
per-tile scores would modulate neighbouring tiles differently and show as seams. For
video the scores may be averaged over +-``window`` frames; a frame is released to the
upscaler only when every score in its window is known. The driver is the only writer
of ``degradation_raw`` (estimates) and ``degradation`` (what the workers use).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline.store import JobStore


class Conditioning:
    """``needed``: the model takes scores; ``window``: smoothing half-width in frames;
    ``fixed``: scores given by the user for every frame, or None."""

    def __init__(
        self,
        store: JobStore,
        frames: int,
        needed: bool,
        window: int = 0,
        fixed: tuple[float, float] | None = None,
    ) -> None:
        self.needed, self.window, self.frames = needed, window, frames
        self.released = np.zeros(frames, bool)
        if not self.needed:
            return
        self.raw_arr, self.final_arr = store.degradation_arrays()
        self.raw = np.asarray(self.raw_arr[...])
        if fixed is not None and not np.isfinite(self.raw).all():
            self.raw[:] = fixed
            self.raw_arr[...] = self.raw

    def missing(self, frames: Iterable[int]) -> list[int]:
        """Frames among these whose scores still have to be estimated."""
        if not self.needed:
            return []
        return [f for f in frames if not np.isfinite(self.raw[f]).all()]

    def record(self, frames: Iterable[int], scores: np.ndarray) -> None:
        frames = list(frames)
        self.raw[frames] = scores
        for f, s in zip(frames, scores, strict=True):
            self.raw_arr[f] = s

    def release(self, candidates: Iterable[int]) -> list[int]:
        """Frames (among the ingested candidates) whose conditioning is now final."""
        out = []
        for f in candidates:
            if self.released[f]:
                continue
            if self.needed:
                lo, hi = max(0, f - self.window), min(self.frames, f + self.window + 1)
                window = self.raw[lo:hi]
                if not np.isfinite(window).all():
                    continue
                self.final_arr[f] = window.mean(axis=0)
            self.released[f] = True
            out.append(f)
        return out
