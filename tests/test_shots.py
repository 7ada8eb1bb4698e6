"""Shot-mode conditioning: cuts found on the LR frames, one set of scores per shot."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.pure.shots import ShotTracker, frame_signature, is_cut
from tests.video_fixtures import frame_rgb

WEIGHTS = Path(__file__).parent / "data" / "golden" / "weights"


def scene_b(index: int, width: int, height: int) -> np.ndarray:
    """Another scene: dark, with horizontal stripes that drift."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    v = 0.15 + 0.1 * np.sin((y + 2 * index) / 3.0) + 0.02 * (x / width)
    img = np.stack([v, v * 0.8, v * 1.3], axis=-1)
    return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)


def clip_with_cut(path: Path, frames: int = 12, cut: int = 6, w: int = 48, h: int = 32) -> Path:
    with av.open(str(path), "w") as out:
        vs = out.add_stream("ffv1", rate=Fraction(24))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv444p"
        for i in range(frames):
            img = frame_rgb(i, w, h) if i < cut else scene_b(i, w, h)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv444p")
            frame.pts = i
            frame.time_base = Fraction(1, 24)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
    return path


@pytest.mark.unit
def test_a_cut_is_seen_and_motion_is_not():
    a = [frame_signature(frame_rgb(i, 96, 64), 255.0) for i in range(4)]
    b = frame_signature(scene_b(0, 96, 64), 255.0)
    assert not any(is_cut(x, y) for x, y in zip(a, a[1:], strict=False))
    assert is_cut(a[-1], b) and is_cut(b, a[0])


@pytest.mark.unit
def test_shots_do_not_depend_on_arrival_order_and_close_at_the_cap():
    rng = np.random.default_rng(0)
    frames = [frame_rgb(i, 48, 32) if i < 7 or i >= 15 else scene_b(i, 48, 32) for i in range(30)]
    sigs = np.stack([frame_signature(f, 255.0) for f in frames])
    expected = [(0, 7), (7, 15), (15, 25), (25, 30)]  # the last shot is capped at 10
    for _ in range(3):
        tracker, known = ShotTracker(30, max_frames=10), np.zeros(30, bool)
        shown, closed = np.full_like(sigs, np.nan), []
        for f in rng.permutation(30):
            shown[f], known[f] = sigs[f], True
            closed += tracker.advance(shown, known)
        assert closed == expected


@pytest.mark.integration
def test_tiny_s3diff_gives_every_frame_of_a_shot_the_same_scores(tmp_path):
    from pipeline.job.launch import run_job
    from pipeline.store.jobstore import JobStore, default_store_url
    from tests.helpers import make_config

    src = clip_with_cut(tmp_path / "cut.mkv")
    out = tmp_path / "out.mkv"
    cfg = make_config(
        scale=2,
        tile=32,
        overlap=24,
        keep=True,
        run__runner="local",
        model__name="s3diff",
        model__weights=str(WEIGHTS),
        video__codec="ffv1",
        video__segment_frames=4,
    )
    run_job(str(src), str(out), cfg, progress=False)
    store = JobStore.open(default_store_url(str(src), str(out), None), mode="r")
    shots = np.asarray(store.array("shot")[...])
    assert shots.tolist() == [0] * 6 + [1] * 6  # a clip with a cut gives two shots
    raw = np.asarray(store.array("degradation_raw")[...])
    final = np.asarray(store.array("degradation")[...])
    for a, b in ((0, 6), (6, 12)):
        assert (final[a:b] == final[a]).all()  # identical scores: identical modulation
        np.testing.assert_allclose(final[a], raw[a:b].mean(axis=0), rtol=1e-6)
    assert not np.allclose(final[0], final[6])  # the cut changes them
    assert not (raw[:6] == raw[0]).all()  # what they replaced did jitter frame to frame

    # A resume finds the same shots from the stored signatures.
    from pipeline.regions.conditioning import Conditioning

    again = Conditioning(JobStore.open(store.url), 12, True, mode="shot", max_shot=1000)
    assert again.shot_bounds() == [(0, 6), (6, 12)]
    assert again.tracker.start == 12
