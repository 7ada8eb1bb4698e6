"""The video fixture generators write what they promise, read back with PyAV."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.video_fixtures import (
    AUDIO_FRAME,
    AUDIO_RATE,
    BT709_TAGS,
    DEFAULT_SUBTITLES,
    HDR10_TAGS,
    HLG_TAGS,
    cfr_times,
    decode_frames,
    default_time_base,
    expected_pts,
    frame_rgb,
    make_10bit_hevc_clip,
    make_clip,
    make_mkv_with_subtitles,
    make_rotated_clip,
    make_vfr_clip,
    probe_summary,
    vfr_times,
    video_stream,
)

pytestmark = pytest.mark.integration

# One AAC frame of slack, plus Matroska's ms rounding.
AUDIO_SLACK_S = AUDIO_FRAME / AUDIO_RATE + 0.002


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


def _check_audio(summary: dict, video_duration: float, channels: int = 2) -> None:
    audio = video_stream(summary, "audio")
    assert audio["codec"] == "aac"
    assert audio["sample_rate"] == AUDIO_RATE
    assert audio["channels"] == channels
    assert audio["packets"] > 10
    assert abs(audio["duration_s"] - video_duration) <= AUDIO_SLACK_S


@pytest.mark.parametrize("ext", ["mp4", "mkv", "mov"])
@pytest.mark.parametrize("rate", [Fraction(30), Fraction(24000, 1001)], ids=["30", "23.976"])
def test_cfr_clip(tmp_path, ext, rate):
    frames = 24
    path = make_clip(tmp_path / f"clip.{ext}", rate=rate, frames=frames)
    assert path.exists() and path.suffix == f".{ext}"
    s = probe_summary(path)
    v = video_stream(s)
    assert v["codec"] == "h264"
    assert (v["width"], v["height"], v["pix_fmt"]) == (96, 64, "yuv420p")
    assert v["packets"] == frames
    tb = v["time_base"]
    times = cfr_times(frames, rate)
    assert v["pts"] == expected_pts(times, tb)
    if ext != "mkv":
        # MP4/MOV keep the time base we set, so every pts is an exact multiple of 1/rate.
        assert tb == default_time_base(rate)
        step = (1 / rate) / tb
        assert step.denominator == 1
        assert v["pts"] == [i * int(step) for i in range(frames)]
    else:
        assert tb == Fraction(1, 1000)
    assert v["keyframes"] == 3  # gop 8
    assert v["reordered"]  # B-frames
    assert v["average_rate"] == rate
    assert v["rotation"] == 0
    video_duration = frames / float(rate)
    assert v["duration_s"] == pytest.approx(video_duration, abs=0.002)
    _check_audio(s, video_duration)


def test_cfr_frames_decode_and_differ(tmp_path):
    path = make_clip(tmp_path / "clip.mp4", frames=16, audio=False)
    s = probe_summary(path)
    assert [st["type"] for st in s["streams"]] == ["video"]
    frames = decode_frames(path)
    assert len(frames) == 16
    assert all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) == 16
    for i in (0, 7, 15):
        assert _mean_abs(frames[i], frame_rgb(i, 96, 64)) < 8
    # Display order: frame i matches picture i better than its neighbour.
    assert _mean_abs(frames[5], frame_rgb(5, 96, 64)) < _mean_abs(frames[5], frame_rgb(6, 96, 64))


def test_gop_bframes_and_mono_options(tmp_path):
    path = make_clip(
        tmp_path / "c.mp4", frames=12, gop=4, bframes=False, audio_channels=1, width=64, height=48
    )
    s = probe_summary(path)
    v = video_stream(s)
    assert v["keyframes"] == 3
    assert not v["reordered"]
    assert (v["width"], v["height"]) == (64, 48)
    _check_audio(s, 12 / 30, channels=1)


def test_bt709_tags(tmp_path):
    path = make_clip(tmp_path / "c709.mp4", frames=12, color=BT709_TAGS, audio=False)
    v = video_stream(probe_summary(path, rotation=False))
    for key, value in BT709_TAGS.items():
        assert v[key] == value, key
    frames = decode_frames(path)
    assert _mean_abs(frames[3], frame_rgb(3, 96, 64)) < 8


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_vfr_clip(tmp_path, ext):
    times = vfr_times(20)
    path = make_vfr_clip(tmp_path / f"vfr.{ext}")
    s = probe_summary(path)
    v = video_stream(s)
    assert v["packets"] == 20
    tb = v["time_base"]
    assert tb == (Fraction(1, 30000) if ext == "mp4" else Fraction(1, 1000))
    assert v["pts"] == expected_pts(times, tb)
    gaps = np.diff(v["pts"])
    assert len(set(gaps.tolist())) >= 3  # 1/30, 1/15 and the long gap
    assert gaps.max() >= 0.4 / tb
    assert v["keyframes"] > 1
    video_duration = float(times[-1] + Fraction(1, 30))
    assert v["duration_s"] == pytest.approx(video_duration, abs=0.002)
    if ext == "mkv":
        # Matroska keeps each frame's own duration (the gap to the next frame).
        end = expected_pts([times[-1] + Fraction(1, 30)], tb)[0]
        gaps_ms = np.diff(v["pts"] + [end])
        assert np.abs(np.array(v["durations"]) - gaps_ms).max() <= 1  # ms rounding
    _check_audio(s, video_duration)


def test_mkv_subtitles_round_trip(tmp_path):
    path = make_mkv_with_subtitles(tmp_path / "subs.mkv")
    s = probe_summary(path)
    assert s["format"] == "matroska,webm"
    assert [st["type"] for st in s["streams"]] == ["video", "audio", "subtitle"]
    sub = video_stream(s, "subtitle")
    assert sub["codec"] in ("subrip", "srt")
    assert sub["time_base"] == Fraction(1, 1000)
    assert sub["data"] == [text.encode("utf-8") for _, _, text in DEFAULT_SUBTITLES]
    assert sub["data_pts"] == [round(start * 1000) for start, _, _ in DEFAULT_SUBTITLES]
    assert sub["durations"] == [round(d * 1000) for _, d, _ in DEFAULT_SUBTITLES]
    v = video_stream(s)
    assert v["packets"] == 24 and v["keyframes"] == 3
    _check_audio(s, 0.8)


def test_mkv_subtitles_custom_cues(tmp_path):
    cues = [(0.1, 0.3, "Hello"), (0.5, 0.1, "World")]
    path = make_mkv_with_subtitles(tmp_path / "c.mkv", cues=cues, frames=18, audio=False)
    s = probe_summary(path, rotation=False)
    sub = video_stream(s, "subtitle")
    assert sub["data"] == [b"Hello", b"World"]
    assert sub["data_pts"] == [100, 500]
    with pytest.raises(ValueError):
        make_mkv_with_subtitles(tmp_path / "c.mp4")


@pytest.mark.parametrize("rotation", [90, 180, 270, -90])
def test_rotated_clip(tmp_path, rotation):
    path = make_rotated_clip(tmp_path / "rot.mp4", rotation=rotation, audio=rotation == 90)
    s = probe_summary(path)
    v = video_stream(s)
    # Read back normalised to (-180, 180] or [-180, 180): compare modulo 360.
    assert v["rotation"] % 360 == rotation % 360
    # The coded picture is not rotated.
    assert (v["width"], v["height"]) == (96, 64)
    assert v["packets"] == 12
    if rotation == 90:
        _check_audio(s, 0.4)


@pytest.mark.parametrize(
    ("ext", "tags"), [("mp4", HDR10_TAGS), ("mkv", HLG_TAGS)], ids=["mp4-pq", "mkv-hlg"]
)
def test_10bit_hevc_clip(tmp_path, ext, tags):
    path = make_10bit_hevc_clip(tmp_path / f"hdr.{ext}", color=tags)
    s = probe_summary(path)
    v = video_stream(s)
    assert v["codec"] == "hevc"
    assert v["pix_fmt"] == "yuv420p10le"
    assert (v["width"], v["height"]) == (64, 48)
    for key, value in tags.items():
        assert v[key] == value, key
    assert v["packets"] == 12
    assert v["pts"] == expected_pts(cfr_times(12, 30), v["time_base"])
    assert v["keyframes"] == 3  # gop 4
    _check_audio(s, 0.4)
    frames = decode_frames(path, format="rgb48le")
    assert len(frames) == 12
    assert frames[0].dtype == np.uint16 and frames[0].shape == (48, 64, 3)
    # 10-bit: more than 256 distinct levels survive in a channel.
    assert len(np.unique(frames[4][..., 0])) > 256 or len(np.unique(frames[4])) > 256
    assert _mean_abs(frames[4], frame_rgb(4, 64, 48, depth=16)) / 257 < 8


def _packet_layout(path: Path) -> list[tuple]:
    with av.open(str(path)) as c:
        return [
            (p.stream.index, p.pts, p.dts, p.duration, p.is_keyframe) for p in c.demux() if p.size
        ]


def test_generators_are_deterministic(tmp_path):
    """What the generators control is reproducible: with a deterministic codec (FFV1, no
    audio) the files are byte-identical (no creation time, no random UIDs); with
    libx264 + AAC every packet's timing and keyframe flag repeats and the pictures agree.
    libx264's bytes themselves are not compared: CI measured two in-process encodes of
    the same frames differing by 59 bytes on a loaded machine (docs/RELIABILITY.md)."""
    kw = {"frames": 12, "codec": "ffv1", "bframes": False, "audio": False}
    a = make_clip(tmp_path / "a.mkv", **kw).read_bytes()
    b = make_clip(tmp_path / "b.mkv", **kw).read_bytes()
    assert a == b
    a, b = make_clip(tmp_path / "a264.mkv", frames=12), make_clip(tmp_path / "b264.mkv", frames=12)
    assert _packet_layout(a) == _packet_layout(b)
    for fa, fb in zip(decode_frames(a), decode_frames(b), strict=True):
        assert _mean_abs(fa, fb) < 2.0
    a = make_10bit_hevc_clip(tmp_path / "a.mp4", audio=False)
    b = make_10bit_hevc_clip(tmp_path / "b.mp4", audio=False)
    assert _packet_layout(a) == _packet_layout(b)
