"""Video in segments: encoded one by one, joined without re-encoding, scratch bounded,
resumed at segment granularity. Clips are made by the tests (PyAV); outputs are read
with PyAV and, where it is installed, checked with ffmpeg itself."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.job.launch import run_job
from pipeline.store.jobstore import JobStore, default_store_url
from pipeline.video.assemble import plan_dts, reorder_delay
from tests.helpers import LOCAL_RUNNER, launch_cli, main_cli, make_config
from tests.test_reliability import kill_when, no_finished_looking_output
from tests.video_fixtures import decode_frames, make_clip, probe_summary, video_stream

pytestmark = pytest.mark.integration


def ffmpeg_exe() -> str | None:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


def assert_ffmpeg_reads_cleanly(path: Path) -> None:
    exe = ffmpeg_exe()
    if exe is None:
        pytest.skip("no ffmpeg binary (pip install imageio-ffmpeg)")
    result = subprocess.run(
        [exe, "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def cfg(**extra):
    return make_config(scale=2, tile=32, overlap=8, **extra)


def video_packets(path: Path) -> list[tuple[int, int]]:
    """(pts, dts) of the video packets in file order."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        return [(p.pts, p.dts) for p in c.demux(vs) if p.size]


# ---------------------------------------------------------------- the dts plan (pure)
@pytest.mark.parametrize(
    "pts,delay",
    [([0, 1, 2, 3], 0), ([0, 3, 1, 2], 1), ([0, 4, 2, 1, 3], 2), ([2, 0, 1], 1)],
)
def test_reorder_delay(pts, delay):
    assert reorder_delay(pts) == delay


def test_planned_dts_rise_strictly_and_never_pass_pts():
    # Two segments with B-frames (decode order), as x264 with pyramids emits them.
    segments = [[0, 40, 20, 10, 30], [50, 90, 70, 60, 80, 100]]
    dts = plan_dts(segments, first_duration=10)
    flat = [d for s in dts for d in s]
    pts = [p for s in segments for p in s]
    assert all(a < b for a, b in zip(flat, flat[1:], strict=False))
    assert all(d <= p for d, p in zip(flat, pts, strict=True))
    assert flat[0] < 0  # the encoder delay, before the first frame


# --------------------------------------------------------------- segmented == whole
def test_segmented_output_equals_the_unsegmented_one_with_ffv1(tmp_path):
    src = make_clip(tmp_path / "clip.mp4", frames=40, gop=8)
    whole, parts = tmp_path / "whole.mkv", tmp_path / "parts.mkv"
    common = {"video__codec": "ffv1", "keep": True, "run__runner": "local"}
    s1 = run_job(str(src), str(whole), cfg(**common, video__segment_frames=1000), progress=False)
    s2 = run_job(str(src), str(parts), cfg(**common, video__segment_frames=8), progress=False)
    assert (s1.segments_total, s2.segments_total) == (1, 5)
    got, want = decode_frames(parts), decode_frames(whole)
    assert len(got) == len(want) == 40
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"frame {i}")
    a, b = probe_summary(parts), probe_summary(whole)
    assert video_stream(a)["pts"] == video_stream(b)["pts"]
    audio_a = [s for s in a["streams"] if s["type"] == "audio"]
    audio_b = [s for s in b["streams"] if s["type"] == "audio"]
    assert audio_a and audio_a[0]["data"] == audio_b[0]["data"]
    assert audio_a[0]["data_pts"] == audio_b[0]["data_pts"]
    assert_ffmpeg_reads_cleanly(parts)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_joins_do_not_pump(tmp_path, codec):
    """Frames next to a segment join are as close to what was encoded as frames in the
    middle of a segment (B-frames on), and dts rise strictly across the joins."""
    src = make_clip(tmp_path / "clip.mp4", frames=48, gop=12, width=128, height=96)
    out = tmp_path / "out.mp4"  # MP4 stores dts (Matroska does not)
    job = cfg(
        keep=True,
        run__runner="local",
        video__keep_frames=True,
        video__segment_frames=12,
        video__codec=codec,
    )
    summary = run_job(str(src), str(out), job, progress=False)
    assert summary.segments_total == 4
    store = JobStore.open(default_store_url(str(src), str(out), None), mode="r")
    encoded_from = store.array("output")[...]
    got = decode_frames(out)
    assert len(got) == 48
    psnr = [_psnr(g, e) for g, e in zip(got, encoded_from, strict=True)]
    edges = {a for a, _ in store.spec["segments"]} | {b - 1 for _, b in store.spec["segments"]}
    at_joins = np.mean([psnr[i] for i in sorted(edges)])
    inside = np.mean([p for i, p in enumerate(psnr) if i not in edges])
    assert at_joins >= inside - 0.5, (at_joins, inside)
    packets = video_packets(out)
    dts = [d for _, d in packets]
    assert all(a < b for a, b in zip(dts, dts[1:], strict=False))
    assert_ffmpeg_reads_cleanly(out)


# ------------------------------------------------------------------ bounded scratch
def _frames_bytes(store_dir: Path) -> int:
    """Bytes of the store's frames (everything but the encoded segment files)."""
    total, stack = 0, [str(store_dir)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # removed meanwhile
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "segments":
                        stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
    return total


# Segments of 12 frames, a decode window of 48 (4 segments), a video 16 windows long and
# one a quarter of that: the proportions of the earlier 48-frame segments and 192-frame
# window at 3000 and 750 frames, in a quarter of the run time.
SEGMENT, WINDOW, LONG = 12, 48, 768


def _peak_scratch(tmp_path: Path, frames: int) -> tuple[int, int]:
    """(peak frame bytes sampled during the run, the store's fixed overhead)."""
    src = make_clip(
        tmp_path / f"c{frames}.mkv",
        frames=frames,
        gop=SEGMENT,
        width=16,
        height=16,
        audio=False,
        codec="ffv1",
    )
    out = tmp_path / f"o{frames}.mkv"
    store_dir = Path(default_store_url(str(src), str(out), None))
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            if store_dir.exists():
                peak[0] = max(peak[0], _frames_bytes(store_dir))
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    job = cfg(
        keep=True,
        run__runner="local",
        video__codec="ffv1",
        video__segment_frames=SEGMENT,
        video__max_frames_in_store=WINDOW,
    )
    try:
        summary = run_job(str(src), str(out), job, progress=False)
    finally:
        stop.set()
        thread.join()
    assert summary.frames == frames and summary.segments_total == -(-frames // SEGMENT)
    return peak[0], _frames_bytes(store_dir)


@pytest.mark.timeout(900)
def test_scratch_does_not_grow_with_the_video(tmp_path):
    """768 frames and 192 frames: the frames held in the store peak at about the same
    size, within the window (48 decoded frames ahead of the oldest not encoded, plus the
    segment being decoded), far below the whole video's frames."""
    # The two runs at once, in two processes (each samples its own store).
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        runs = pool.map(_peak_scratch, [tmp_path, tmp_path], [LONG, LONG // 4])
        (long_peak, long_rest), (short_peak, _) = list(runs)
    per_frame = 16 * 16 * 3 + 32 * 32 * 3  # input + output, uncompressed
    window = (WINDOW + SEGMENT) * per_frame
    assert long_peak - long_rest <= 2 * window, (long_peak, long_rest, window)
    assert long_peak <= 1.3 * short_peak, (long_peak, short_peak)
    assert long_peak < 0.2 * LONG * per_frame


# ------------------------------------------------------------- resume by segments
# A kill while encoding redoes only the segments not yet encoded, their files untouched:
# tests/test_reliability.py::test_killed_cli_resumes_video_at_ingest_and_encoding.


def test_kill_at_assembly_redoes_no_segment(tmp_path):
    src = make_clip(tmp_path / "clip.mp4", frames=24, gop=8)
    out = tmp_path / "out.mp4"
    args = [src, "-o", out, "--scale", "2", "--tile", "32", "--overlap", "8"]
    args += ["--set", "video.segment_frames=8", *LOCAL_RUNNER]
    kill_when(launch_cli(*args, stdout=subprocess.DEVNULL), lambda ln: "assemble:" in ln)
    no_finished_looking_output(out)
    final = main_cli(*args)  # the rerun in this process
    assert final.returncode == 0, final.stderr
    assert "0/3 segments encoded" in final.stdout, final.stdout
    assert len(decode_frames(out)) == 24
    assert_ffmpeg_reads_cleanly(out)


@pytest.mark.parametrize(
    "codec,ext,pix_fmt",
    [
        ("libx264", "mp4", None),
        ("libx265", "mkv", "yuv420p10le"),
        ("libsvtav1", "mp4", None),
        ("prores_ks", "mov", "yuv422p10le"),
        ("ffv1", "mkv", None),
    ],
)
def test_every_offered_codec_works_segmented(tmp_path, codec, ext, pix_fmt):
    src = make_clip(tmp_path / "clip.mp4", frames=24, gop=8, width=64, height=64)
    out = tmp_path / f"out.{ext}"
    extra = {"video__pix_fmt": pix_fmt} if pix_fmt else {}
    job = cfg(run__runner="local", video__codec=codec, video__segment_frames=8, **extra)
    summary = run_job(str(src), str(out), job, progress=False)
    assert summary.segments_total == 3
    s = probe_summary(out)
    v = video_stream(s)
    assert v["codec"] in (
        codec.removeprefix("lib").removesuffix("_ks"),
        "av1",
        "libdav1d",
        "hevc",
        "h264",
        "prores",
        "ffv1",
    ), v["codec"]
    assert v["packets"] == 24 and len(decode_frames(out)) == 24
    if pix_fmt:
        assert v["pix_fmt"] == pix_fmt
    assert_ffmpeg_reads_cleanly(out)
