"""Estimate stage bookkeeping: per-frame degradation scores, kept in the job store.

S3Diff is conditioned on two degradation scores per frame, estimated once per frame
(by the workers, from a fixed set of LR crops) and given to every tile of the frame:
per-tile scores would modulate neighbouring tiles differently and show as seams. What a
frame finally gets depends on the mode (``model.degradation_mode``):

- ``frame``: its own scores; ``window``: the mean over +-``window`` frames;
- ``shot``: the mean over its shot, so consecutive frames of one shot are modulated
  identically (scores that jitter inside a shot are a flicker source); shots are found
  on the LR frames' signatures, which the estimate calls return too (``pipeline.pure.shots``);
- ``fixed``: the user's scores for every frame.

A frame is released to the upscaler only when its final scores are known. The driver is
the only writer of ``degradation_raw`` (estimates), ``degradation`` (what the workers
use) and the shot arrays.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline.pure.shots import ShotTracker
from pipeline.runner.tasks import Estimates
from pipeline.store.jobstore import JobStore


class Conditioning:
    """``needed``: the model takes scores; ``mode``: see the module docstring;
    ``window``: smoothing half-width; ``fixed``: the user's scores or None;
    ``max_shot``: frames a shot may span at most (the decode window)."""

    def __init__(
        self,
        store: JobStore,
        frames: int,
        needed: bool,
        window: int = 0,
        fixed: tuple[float, float] | None = None,
        mode: str = "window",
        max_shot: int = 1 << 30,
        threshold: float = 0.3,
    ) -> None:
        self.needed, self.frames = needed, frames
        self.mode = "fixed" if fixed is not None else mode
        self.window = window if self.mode == "window" else 0
        self.released = np.zeros(frames, bool)
        if not self.needed:
            return
        self.raw_arr, self.final_arr = store.degradation_arrays()
        self.raw = np.asarray(self.raw_arr[...])
        if fixed is not None and not np.isfinite(self.raw).all():
            self.raw[:] = fixed
            self.raw_arr[...] = self.raw
        self.shots = self.mode == "shot"
        if self.shots:
            self.sig_arr, self.shot_arr = store.shot_arrays()
            self.sig = np.asarray(self.sig_arr[...])
            self.known = np.isfinite(self.sig).all(axis=1)
            self.shot_of = np.full(frames, -1, np.int64)
            self.tracker = ShotTracker(frames, max_shot, threshold)
            self.pending: list[tuple[int, int]] = []  # closed shots waiting for scores
            self.shot_count = 0
            self._advance_shots()

    @property
    def wants_signatures(self) -> bool:
        return self.needed and self.mode == "shot"

    def missing(self, frames: Iterable[int]) -> list[int]:
        """Frames among these whose scores still have to be estimated."""
        if not self.needed:
            return []
        return [f for f in frames if not np.isfinite(self.raw[f]).all()]

    def record(self, frames: Iterable[int], result: Estimates) -> None:
        """An estimate call's result: its frames' scores, and their signatures in shot
        mode (the workers return them when ``JobRef.signatures``, set from ``mode``)."""
        frames = list(frames)
        scores = result.scores
        self.raw[frames] = scores
        for f, s in zip(frames, scores, strict=True):
            self.raw_arr[f] = s
        if self.shots:
            if result.signatures is None:
                raise RuntimeError("shot-mode estimates came back without signatures")
            sigs = np.asarray(result.signatures, np.float32)
            self.sig[frames] = sigs
            self.known[frames] = True
            lo, hi = min(frames), max(frames) + 1
            if hi - lo == len(frames):
                self.sig_arr[lo:hi] = self.sig[lo:hi]
            else:
                for f in frames:
                    self.sig_arr[f] = self.sig[f]
            self._advance_shots()

    def _advance_shots(self) -> None:
        for a, b in self.tracker.advance(self.sig, self.known):
            self.shot_of[a:b] = self.shot_count
            self.shot_arr[a:b] = self.shot_count
            self.shot_count += 1
            self.pending.append((a, b))

    def shot_bounds(self) -> list[tuple[int, int]]:
        """The shots decided so far, as [start, end) frame ranges."""
        if not self.shots:
            return []
        ids = np.asarray(self.shot_arr[...])
        out, start = [], 0
        for f in range(1, len(ids) + 1):
            if f == len(ids) or ids[f] != ids[start]:
                if ids[start] >= 0:
                    out.append((start, f))
                start = f
        return out

    def release(self, candidates: Iterable[int]) -> list[int]:
        """Frames (among the ingested candidates) whose conditioning is now final."""
        if self.needed and self.shots:
            self._finish_shots()
        out = []
        for f in candidates:
            if self.released[f]:
                continue
            if self.needed:
                if self.shots:
                    if not self._shot_final(f):
                        continue
                else:
                    lo, hi = max(0, f - self.window), min(self.frames, f + self.window + 1)
                    window = self.raw[lo:hi]
                    if not np.isfinite(window).all():
                        continue
                    self.final_arr[f] = window.mean(axis=0)
            self.released[f] = True
            out.append(f)
        return out

    def _finish_shots(self) -> None:
        """Write the mean scores of closed shots whose every frame is estimated."""
        waiting = []
        for a, b in self.pending:
            scores = self.raw[a:b]
            if np.isfinite(scores).all():
                self.final_arr[a:b] = np.broadcast_to(scores.mean(axis=0), scores.shape)
                self.final_done[a:b] = True
            else:
                waiting.append((a, b))
        self.pending = waiting

    def _shot_final(self, f: int) -> bool:
        return bool(self.final_done[f])

    @property
    def final_done(self) -> np.ndarray:
        if not hasattr(self, "_final_done"):
            self._final_done = np.zeros(self.frames, bool)
        return self._final_done
