"""Shots: where a video cuts, from its low-resolution frames (pure, numpy only).

S3Diff's LoRA is modulated by per-frame degradation scores; scores that jitter inside
one shot modulate every tile differently on consecutive frames, a flicker source we
control. With ``model.degradation_mode=shot`` every frame of a shot gets the shot's
mean scores.

The method (documented, as PySceneDetect's content detector does it, simplified): each
frame's signature is a 16-bin histogram of its luma plus a 12x12 luma thumbnail, both
from the LR frame. Two consecutive frames are cut apart when the histograms differ by
more than ``threshold`` (half the L1 distance, 0..1) *and* the thumbnails differ by more
than ``threshold / 2`` (mean absolute difference, 0..1): a flash changes the histogram
without moving content, and a pan moves content without changing the histogram. A shot
is also closed when it reaches ``max_frames`` (a video's decode window: a longer shot
could never be seen whole), so every decision depends only on the frames themselves.
"""

from __future__ import annotations

import numpy as np

BINS = 16
THUMB = 12
SIGNATURE_LEN = BINS + THUMB * THUMB
DEFAULT_THRESHOLD = 0.3


def frame_signature(frame_hwc: np.ndarray, maxval: float) -> np.ndarray:
    """(SIGNATURE_LEN,) float32: luma histogram (sums to 1), then the thumbnail (0..1).
    ``frame_hwc``: (H, W, C) of any dtype, ``maxval`` its white."""
    f = np.asarray(frame_hwc, np.float32) / maxval
    luma = f[..., :3] @ np.float32([0.299, 0.587, 0.114]) if f.shape[-1] >= 3 else f[..., 0]
    luma = np.clip(luma, 0.0, 1.0)
    hist = np.bincount(np.minimum((luma * BINS).astype(np.int64), BINS - 1).ravel(),
                       minlength=BINS).astype(np.float32)  # fmt: skip
    hist /= max(hist.sum(), 1.0)
    h, w = luma.shape
    ys = np.linspace(0, h, THUMB + 1).astype(int)
    xs = np.linspace(0, w, THUMB + 1).astype(int)
    thumb = np.array(
        [
            [luma[ys[i] : max(ys[i + 1], ys[i] + 1), xs[j] : max(xs[j + 1], xs[j] + 1)].mean()
             for j in range(THUMB)]
            for i in range(THUMB)
        ],
        np.float32,
    )  # fmt: skip
    return np.concatenate([hist, thumb.ravel()])


def is_cut(a: np.ndarray, b: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """Whether frames with signatures ``a`` then ``b`` belong to different shots."""
    hist = 0.5 * float(np.abs(a[:BINS] - b[:BINS]).sum())
    content = float(np.abs(a[BINS:] - b[BINS:]).mean())
    return hist > threshold and content > threshold / 2


class ShotTracker:
    """Decides shots in frame order as signatures become known; incremental, and the
    same shots whatever order the signatures arrive in (a resume finds the same)."""

    def __init__(self, frames: int, max_frames: int, threshold: float = DEFAULT_THRESHOLD):
        self.frames, self.max_frames, self.threshold = frames, max(1, max_frames), threshold
        self.start = 0  # first frame of the open shot
        self.next = 1  # next frame whose cut decision is pending

    def advance(self, signatures: np.ndarray, known: np.ndarray) -> list[tuple[int, int]]:
        """Shots [a, b) closed by what is known now. ``signatures`` (T, K) float32,
        ``known`` (T,) bool: which rows are filled."""
        closed = []
        if self.start >= self.frames or not known[self.start]:
            return closed
        while self.next < self.frames and known[self.next]:
            f = self.next
            long = f - self.start >= self.max_frames
            if long or is_cut(signatures[f - 1], signatures[f], self.threshold):
                closed.append((self.start, f))
                self.start = f
            self.next += 1
        if self.next >= self.frames and self.start < self.frames:
            closed.append((self.start, self.frames))
            self.start = self.frames
        return closed
