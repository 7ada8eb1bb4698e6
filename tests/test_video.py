"""The video path end to end on real encoded clips made by the tests (PyAV) and a real job
store: frames, timestamps, streams and tags survive exactly. The runs are in-process
(``run.runner=local``); one runs on real local Ray as well and must agree. The round trip
of each kind of clip (CFR, NTSC, VFR, subtitles, rotation, 10-bit HEVC) is checked in the
one container matrix, tests/test_video_metadata.py; the helpers here check it."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.job.launch import run_job
from pipeline.store.jobstore import JobStore, default_store_url
from tests.helpers import bicubic_reference, make_config
from tests.video_fixtures import (
    decode_frames,
    make_10bit_hevc_clip,
    make_clip,
    make_mkv_with_subtitles,
    probe_summary,
)

pytestmark = pytest.mark.integration


def video_cfg(**extra):
    """In-process unless a test asks for Ray: the subject here is the video path, which
    runs the same under both runners (``test_local_and_ray_runners_agree``)."""
    extra.setdefault("video__segment_frames", 4)
    extra.setdefault("run__runner", "local")
    return make_config(scale=2, tile=32, overlap=8, **extra)


def streams_by_type(summary, kind):
    return [s for s in summary["streams"] if s["type"] == kind]


def times(stream) -> list[Fraction]:
    return [p * stream["time_base"] for p in stream["pts"]]


def assert_video_preserved(src: Path, out: Path, scale: int = 2):
    a, b = probe_summary(src), probe_summary(out)
    va, vb = streams_by_type(a, "video")[0], streams_by_type(b, "video")[0]
    assert vb["packets"] == va["packets"]  # no lost or extra frames
    assert times(vb) == times(va)  # every frame keeps its presentation time
    assert (vb["width"], vb["height"]) == (va["width"] * scale, va["height"] * scale)
    for tag in ("color_range", "colorspace", "color_primaries", "color_trc"):
        assert vb[tag] == va[tag], tag
    assert (vb["rotation"] or 0) % 360 == (va["rotation"] or 0) % 360
    assert abs(vb["duration_s"] - va["duration_s"]) <= 1 / 24 + 1e-6
    for kind in ("audio", "subtitle"):
        sa, sb = streams_by_type(a, kind), streams_by_type(b, kind)
        assert len(sa) == len(sb), kind
        for x, y in zip(sa, sb, strict=True):
            assert y["data"] == x["data"]  # packets byte-identical, in order
            assert [p * y["time_base"] for p in y["data_pts"]] == [
                p * x["time_base"] for p in x["data_pts"]
            ]
    return va, vb


def assert_pixels_upscaled(src: Path, out: Path, fmt: str = "rgb24", tol: float = 4.0):
    lr, sr = decode_frames(src, format=fmt), decode_frames(out, format=fmt)
    assert len(lr) == len(sr)
    for i in (0, len(lr) // 2, len(lr) - 1):  # codec noise only: mean error of a few levels
        ref = bicubic_reference(lr[i], 2).astype(float)
        scale = 257.0 if fmt == "rgb48le" else 1.0
        assert np.abs(sr[i].astype(float) - ref).mean() / scale < tol, i


def test_segments_cut_mid_gop_decode_every_frame_exactly(tmp_path):
    src = make_clip(tmp_path / "gop.mp4", frames=30, gop=8)
    reference = decode_frames(src)
    for frames, seg in [(None, 1), ("5:21", 3)]:
        out = tmp_path / f"out_{seg}.mp4"
        cfg = video_cfg(
            keep=True,
            video__keep_frames=True,
            video__segment_frames=seg,
            **({"video__frames": f'"{frames}"'} if frames else {}),
        )
        run_job(str(src), str(out), cfg, progress=False)
        store = JobStore.open(default_store_url(str(src), str(out), None))
        first, last = (5, 21) if frames else (0, 30)
        segments = store.spec["segments"]
        assert len(segments) > 1 and segments[0][0] == 0
        stored = store.array("input")[...]
        assert stored.shape[0] == last - first
        for i in range(last - first):  # same decoder: bit-exact, each frame exactly once
            np.testing.assert_array_equal(stored[i], reference[first + i])


def test_range_keeps_matching_audio_span(tmp_path):
    src = make_clip(tmp_path / "long.mp4", frames=30, rate=Fraction(30))
    out = tmp_path / "part.mp4"
    run_job(str(src), str(out), video_cfg(video__frames='"6:18"'), progress=False)
    a, b = probe_summary(src), probe_summary(out)
    va, vb = streams_by_type(a, "video")[0], streams_by_type(b, "video")[0]
    assert vb["packets"] == 12
    t0 = times(va)[6]
    assert times(vb) == [t - t0 for t in times(va)[6:18]]
    aa, ab = streams_by_type(a, "audio")[0], streams_by_type(b, "audio")[0]
    t1 = times(va)[18]
    frame_s = Fraction(1024, 48000)
    kept = [
        d
        for d, p in zip(aa["data"], aa["data_pts"], strict=True)
        if p * aa["time_base"] + frame_s > t0 and p * aa["time_base"] < t1
    ]
    assert ab["data"] == kept and kept
    lr, sr = decode_frames(src), decode_frames(out)
    assert len(sr) == 12
    ref = bicubic_reference(lr[6], 2).astype(float)
    assert np.abs(sr[0].astype(float) - ref).mean() < 4
    # --start/--end select by time, the same frames here.
    out2 = tmp_path / "part2.mp4"
    run_job(str(src), str(out2), video_cfg(video__start_s=0.2, video__end_s=0.6), progress=False)
    assert streams_by_type(probe_summary(out2), "video")[0]["packets"] == 12


def test_local_and_ray_runners_agree(tmp_path, ray_local):
    """Same pipeline under both runners: identical upscaled frames in the store (the
    encoder's own threading may reorder its rate control, so the files are compared
    decoded, within codec noise). The clip is the tagged one: its stream tags,
    dispositions, chapters and container tags survive the run on Ray too."""
    from tests.test_video_metadata import ffmpeg_errors, ffmpeg_stream_lines, read_meta
    from tests.video_fixtures import make_tagged_clip

    src = make_tagged_clip(tmp_path / "c.mkv")  # 12 frames, audio, subtitles
    stored = []
    for runner in ("ray", "local"):
        out = tmp_path / f"{runner}.mkv"
        run_job(str(src), str(out), video_cfg(keep=True, run__runner=runner), progress=False)
        stored.append(
            JobStore.open(default_store_url(str(src), str(out), None)).array("output")[...]
        )
    np.testing.assert_array_equal(stored[0], stored[1])
    for x, y in zip(
        decode_frames(tmp_path / "ray.mkv"), decode_frames(tmp_path / "local.mkv"), strict=True
    ):
        # libx264 is not bit-reproducible run to run (docs/RELIABILITY.md): codec noise.
        assert np.abs(x.astype(int) - y.astype(int)).mean() < 3.0
    # Tags on Ray (formerly test_video_metadata.py::test_tags_survive_on_ray).
    on_ray = tmp_path / "ray.mkv"
    assert read_meta(on_ray) == read_meta(src)
    assert ffmpeg_stream_lines(on_ray) == [
        "Video (fra) (default)",
        "Audio (jpn) (default) (comment)",
        "Subtitle (eng) (forced) (hearing impaired)",
    ]
    assert ffmpeg_errors(on_ray) == ""


def test_streams_the_container_cannot_hold(tmp_path):
    src = make_mkv_with_subtitles(tmp_path / "subs.mkv")
    with pytest.raises(UserError, match=r"cannot be stored in \.mp4; use \.mkv"):
        run_job(str(src), str(tmp_path / "o.mp4"), video_cfg(run__runner="local"), progress=False)
    run_job(
        str(src),
        str(tmp_path / "o.mp4"),
        video_cfg(run__runner="local", video__drop_unsupported=True),
        progress=False,
    )
    kinds = [s["type"] for s in probe_summary(tmp_path / "o.mp4")["streams"]]
    assert kinds == ["video", "audio"]


def test_codec_that_cannot_keep_10bit_is_refused(tmp_path):
    src = make_10bit_hevc_clip(tmp_path / "hdr.mp4")
    with pytest.raises(UserError, match="cannot encode 10-bit"):
        run_job(str(src), str(tmp_path / "o.mp4"), video_cfg(video__codec="mpeg4"), progress=False)


def test_audio_only_file_is_refused(tmp_path):
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 48000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(UserError, match="has no video stream"):
        run_job(str(path), str(tmp_path / "o.mp4"), video_cfg(), progress=False)


def test_encoded_segments_free_their_frames_and_keep_the_output(tmp_path):
    src = make_clip(tmp_path / "c.mp4", frames=16)
    out = tmp_path / "o.mp4"
    run_job(str(src), str(out), video_cfg(keep=True), progress=False)
    assert_video_preserved(src, out)
    store = JobStore.open(default_store_url(str(src), str(out), None))
    assert store.array("input").nchunks_initialized == 0
    assert store.array("output").nchunks_initialized == 0
    # Freed frames are no longer flagged done; their segments are encoded instead.
    assert not store.done_mask().any()
    assert not store.array("ingested")[...].any()
    assert store.encoded_mask().all() and len(store.spec["segments"]) > 1


def test_keep_frames_keeps_them(tmp_path):
    src = make_clip(tmp_path / "c.mp4", frames=16)
    out = tmp_path / "o.mp4"
    run_job(str(src), str(out), video_cfg(keep=True, video__keep_frames=True), progress=False)
    store = JobStore.open(default_store_url(str(src), str(out), None))
    assert store.done_mask().all() and store.array("ingested")[...].all()
    assert store.array("output").nchunks_initialized == store.array("output").nchunks
