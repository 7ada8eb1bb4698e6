#!/usr/bin/env python
"""Video in segments: peak scratch, encoder scaling, end to end against the loop.

Three tables, each with its baseline measured in the same run:

1. Peak scratch (the job store's size, sampled every 0.2 s while the CLI runs) for a
   clip and a 4x longer one, segmented (frames freed once their segment is encoded,
   decode bounded by the window; with the default 4 s segments and with 1 s segments,
   whose window the short clip overfills) next to the old behaviour (every frame kept in the
   store: ``video.keep_frames=true`` with an unbounded window); bytes per frame.
2. Encode throughput of 1, 2 and 4 encoders on a CPU-bound encode (720p -> 1440p
   libx264): the segments of one stored job encoded by N processes at once
   (``pipeline.video.encode.encode_segment_task``, one thread each); ratio to 1 encoder.
3. End to end: the pipeline CLI against the single-process loop of bench/video.py on
   the same clip and encoder settings.

    python bench/segments.py            # 1280x720, 120 frames (scratch: 320x180, 240/960)
    python bench/segments.py --quick    # smaller, for a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "_data" / "segments"
MIB = 2**20

from bench.video import loop_baseline, make_clip, measure  # noqa: E402


def dir_bytes(path: Path) -> tuple[int, int]:
    """(frame bytes, segment-file bytes) under a job store."""
    frames = segs = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                size = os.path.getsize(os.path.join(root, name))
            except OSError:
                continue
            if "segments" in Path(root).relative_to(path).parts:
                segs += size
            else:
                frames += size
    return frames, segs


def run_sampled(args: list[str], store: Path) -> dict:
    """Run the CLI, sampling its job store; peak total, peak frames, final segments."""
    peak = {"total": 0, "frames": 0, "segments": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            if store.exists():
                f, s = dir_bytes(store)
                peak["total"] = max(peak["total"], f + s)
                peak["frames"] = max(peak["frames"], f)
                peak["segments"] = max(peak["segments"], s)
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), *args],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    stop.set()
    thread.join()
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    return peak | {"rc": proc.returncode, "wall_s": time.perf_counter() - t0}


def scratch_table(width: int, height: int, frames: int) -> None:
    rows = []
    for n in (frames, 4 * frames):
        src = make_clip(DATA / f"scratch_{width}x{height}_{n}.mp4", width, height, n)
        for name, extra in (
            ("segmented", []),
            ("segmented, 1 s segments", ["--set", "video.segment_s=1"]),
            ("old (all frames kept)", ["--set", "video.keep_frames=true", "--set",
                                       "video.max_frames_in_store=100000000"]),
        ):  # fmt: skip
            out = DATA / f"scratch_out_{n}_{len(rows)}.mp4"
            store = Path(f"{out}.job.zarr")
            shutil.rmtree(store, ignore_errors=True)
            args = [str(src), "-o", str(out), "--model", "bicubic", "--scale", "2",
                    "--preset", "veryfast", "--overwrite", "--quiet", *extra]  # fmt: skip
            r = run_sampled(args, store)
            rows.append((name, n, r))
    print("\nPeak scratch (job store, sampled every 0.2 s), bicubic x2 libx264")
    print(f"{'run':26} {'frames':>7} {'peak MiB':>9} {'frames MiB':>11} {'segs MiB':>9} "
          f"{'bytes/frame':>12} {'wall s':>7}")  # fmt: skip
    for name, n, r in rows:
        print(f"{name:26} {n:7d} {r['total'] / MIB:9.1f} {r['frames'] / MIB:11.1f} "
              f"{r['segments'] / MIB:9.1f} {r['total'] / n:12.0f} {r['wall_s']:7.1f}"
              + ("" if r["rc"] == 0 else "  FAILED"))  # fmt: skip
    for kind in ("segmented", "segmented, 1 s segments", "old (all frames kept)"):
        seg = [r for name, _, r in rows if name == kind]
        if len(seg) == 2 and seg[0]["frames"]:
            ratio = seg[1]["frames"] / seg[0]["frames"]
            print(f"{kind}: frame scratch at 4x the length / at 1x = {ratio:.2f}")


def _encode_one(args: tuple) -> float:
    from pipeline.video.encode import encode_segment

    t0 = time.perf_counter()
    encode_segment(*args)
    return time.perf_counter() - t0


def encoder_table(width: int, height: int, frames: int, seg_frames: int) -> None:
    """Encode a stored job's segments with 1, 2 and 4 processes at once."""
    from pipeline.config import load_config
    from pipeline.job.plan import plan_job
    from pipeline.store.jobstore import JobStore

    src = make_clip(DATA / f"enc_{width}x{height}_{frames}.mp4", width, height, frames)
    out = DATA / "enc_out.mp4"
    store_url = f"{out}.job.zarr"
    shutil.rmtree(store_url, ignore_errors=True)
    sets = ["--set", "video.keep_frames=true", "--set", f"video.segment_frames={seg_frames}"]
    args = [str(src), "-o", str(out), "--model", "bicubic", "--scale", "2", "--preset",
            "veryfast", "--overwrite", "--keep-store", "--quiet", *sets]  # fmt: skip
    prep = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), *args],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    if prep.returncode != 0:
        print(prep.stderr[-2000:], file=sys.stderr)
        return
    items = ["model.scale=2", "video.preset=veryfast", "video.keep_frames=true"]
    cfg = load_config(set_items=[*items, f"video.segment_frames={seg_frames}"])
    plan = plan_job(str(src), str(DATA / "enc_probe.mp4"), cfg, overwrite=True)
    store = JobStore.open(store_url)
    from pipeline.video.tasks import Segment, VideoJob

    job = VideoJob(store_url, plan.info, cfg.video, plan.pix_fmt, "mp4", threads=1)
    tasks = [(Segment(900 + i, a, b), job) for i, (a, b) in enumerate(plan.segments)]
    rows = []
    for n in (1, 2, 4):
        t0 = time.perf_counter()
        with ProcessPoolExecutor(n) as pool:
            list(pool.map(_encode_one, tasks))
        wall = time.perf_counter() - t0
        rows.append((n, wall))
    for i in range(len(tasks)):
        Path(store.segment_path(900 + i)).unlink(missing_ok=True)
    out_w, out_h = width * 2, height * 2
    print(f"\nEncode throughput, libx264 veryfast {out_w}x{out_h}, {frames} frames in "
          f"{len(tasks)} segments, one thread per encoder, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'encoders':>8} {'wall s':>7} {'fps':>7} {'vs 1':>6}")
    base = rows[0][1]
    for n, wall in rows:
        print(f"{n:8d} {wall:7.1f} {frames / wall:7.2f} {base / wall:6.2f}x")


def end_to_end_table(width: int, height: int, frames: int) -> None:
    src = make_clip(DATA / f"e2e_{width}x{height}_{frames}.mp4", width, height, frames)
    out_p, out_l = DATA / "e2e_pipeline.mp4", DATA / "e2e_loop.mp4"
    pipe = measure([sys.executable, str(ROOT / "run_pipeline.py"), str(src), "-o", str(out_p),
                    "--model", "bicubic", "--scale", "2", "--crf", "18", "--preset",
                    "veryfast", "--overwrite", "--quiet"])  # fmt: skip
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from bench.video import "
        f"loop_baseline; loop_baseline({str(src)!r}, {str(out_l)!r}, '18', 'veryfast')"
    )
    loop = measure([sys.executable, "-c", code])
    print(f"\nEnd to end, {width}x{height} -> {2 * width}x{2 * height}, {frames} frames, "
          "libx264 crf 18 veryfast")  # fmt: skip
    print(f"{'run':10} {'wall s':>7} {'fps':>7} {'peak RSS GiB':>13} {'vs loop':>8}")
    for name, r in (("loop", loop), ("pipeline", pipe)):
        flag = "" if r["rc"] == 0 else "  FAILED"
        print(f"{name:10} {r['wall_s']:7.1f} {frames / r['wall_s']:7.2f} {r['peak_gib']:13.2f} "
              f"{r['wall_s'] / loop['wall_s']:7.2f}x{flag}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("scratch", "encoders", "e2e"), default=None)
    a = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    if a.only in (None, "scratch"):
        scratch_table(160, 90, 60) if a.quick else scratch_table(320, 180, 240)
    if a.only in (None, "encoders"):
        encoder_table(320, 180, 48, 12) if a.quick else encoder_table(1280, 720, 120, 30)
    if a.only in (None, "e2e"):
        end_to_end_table(320, 180, 60) if a.quick else end_to_end_table(1280, 720, 120)
    _ = loop_baseline  # the loop runs in its own process (measure), imported for reference


if __name__ == "__main__":
    main()
