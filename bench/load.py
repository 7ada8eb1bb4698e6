"""Load: a long video job on several actors, with memory sampled over time.

Generates a small video (default 2000 frames of 64x48), starts a local Ray with logical
GPUs (default 4; torch still runs on the CPU) and upscales it with bicubic on one actor
per logical GPU, while a thread samples once a second the resident memory (RSS) of the
whole process tree (this driver, Ray's GCS, raylet, agents, the region actors, the
encoder) and the plasma object store's usage. Prints the curve and its start/end ratio
over the steady part of the run (every process up, the job not yet closing its actors):
"start" is the mean over 20-30 % of those samples (after the actors have loaded their
model), "end" the mean over the last 10 %. Flat memory means a ratio near 1 and a plasma
store that does not grow (pixels never travel through Ray, so it stays near zero).

    python bench/load.py [--frames 2000] [--actors 4] [--size 64x48] [--keep DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_video(path: Path, frames: int, width: int, height: int) -> Path:
    """A moving gradient plus a moving square, every frame different, H.264 in MP4."""
    import av

    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "20", "g": "48"}
        for i in range(frames):
            img = np.stack(
                [(x * 4 + i * 3) % 256, (y * 5 + i) % 256, ((x + y) * 2 + i * 7) % 256], -1
            ).astype(np.uint8)
            sy, sx = (i * 2) % (height - 8), (i * 3) % (width - 8)
            img[sy : sy + 8, sx : sx + 8] = 255 - (i % 200)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def label(proc: psutil.Process, root: psutil.Process) -> str:
    """driver, gcs_server, raylet, ray::RegionWorker, ray::VideoEncoder, ..."""
    if proc.pid == root.pid:
        return "driver"
    cmd = proc.cmdline()
    first = cmd[0] if cmd else proc.name()
    if first.startswith("ray::"):
        return first.split(".")[0]
    for part in cmd[:3]:
        for known in ("gcs_server", "raylet", "dashboard", "agent", "log_monitor", "monitor"):
            if known in part:
                return known
    return proc.name()


def tree_rss_mb(root: psutil.Process) -> tuple[float, int, dict[str, float]]:
    total, count, by_label = 0, 0, {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            rss = proc.memory_info().rss
            name = label(proc, root)
        except psutil.Error:
            continue
        total += rss
        count += 1
        by_label[name] = by_label.get(name, 0.0) + rss / 2**20
    return total / 2**20, count, by_label


def plasma_mb() -> float:
    from ray._private.internal_api import memory_summary

    text = memory_summary(stats_only=True)
    m = re.search(r"Plasma memory usage (\d+) MiB", text)
    return float(m.group(1)) if m else float("nan")


class Sampler(threading.Thread):
    def __init__(self, period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.period_s = period_s
        self.samples: list[tuple[float, float, int, float]] = []
        self.parts: list[dict[str, float]] = []
        self.stop = threading.Event()
        self.me = psutil.Process()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stop.is_set():
            rss, procs, parts = tree_rss_mb(self.me)
            try:
                plasma = plasma_mb()
            except Exception:  # Ray not up yet, or shutting down
                plasma = float("nan")
            self.samples.append((time.perf_counter() - t0, rss, procs, plasma))
            self.parts.append(parts)
            self.stop.wait(self.period_s)


def window_mean(values: list[float], a: float, b: float) -> float:
    n = len(values)
    part = values[int(n * a) : max(int(n * b), int(n * a) + 1)]
    return float(np.mean(part))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--actors", type=int, default=4, help="actors = logical GPUs")
    p.add_argument("--size", default="64x48", help="WIDTHxHEIGHT of the generated video")
    p.add_argument("--keep", help="work in this directory and keep it")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    import ray

    from pipeline.job.launch import run_job
    from tests.helpers import make_config

    work = Path(args.keep or tempfile.mkdtemp(prefix="load-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    src = make_video(work / "long.mp4", args.frames, width, height)
    print(f"generated {args.frames} frames {width}x{height} in {time.perf_counter() - t:.1f} s")

    sampler = Sampler()
    sampler.start()
    ray.init(
        num_cpus=psutil.cpu_count(),
        num_gpus=args.actors,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        cfg = make_config(scale=2, tile=32, overlap=8, actors=args.actors, video__codec="libx264")
        summary = run_job(str(src), str(work / "long_x2.mp4"), cfg, progress=False)
        # The job closes its actors in its last moments: those samples are not steady.
        job_end_s = sampler.samples[-1][0] - 1.0 if sampler.samples else 0.0
    finally:
        sampler.stop.set()
        sampler.join()
        ray.shutdown()
    print(summary.line())

    s = sampler.samples
    print(f"\n{'t_s':>6} {'rss_MiB':>8} {'procs':>5} {'plasma_MiB':>10}")
    step = max(1, len(s) // 25)
    shown = s[::step] if (len(s) - 1) % step == 0 else [*s[::step], s[-1]]
    for t_s, rss, procs, plasma in shown:
        print(f"{t_s:6.0f} {rss:8.0f} {procs:5d} {plasma:10.1f}")
    full = max(x[2] for x in s)
    keep = [i for i, x in enumerate(s) if x[2] == full and x[0] <= job_end_s]
    steady = [s[i] for i in keep]
    rss = [x[1] for x in steady]
    plasma = [x[3] for x in steady if not np.isnan(x[3])]
    start, end = window_mean(rss, 0.2, 0.3), window_mean(rss, 0.9, 1.0)
    print(
        f"\nsteady part: {len(steady)} samples, {steady[0][0]:.0f}-{steady[-1][0]:.0f} s, "
        f"{full} processes"
    )
    print(
        f"RSS of the process tree: start {start:.0f} MiB, end {end:.0f} MiB, "
        f"end/start {end / start:.3f}, peak {max(x[1] for x in s):.0f} MiB"
    )
    if plasma:
        print(
            f"plasma object store: start {window_mean(plasma, 0.2, 0.3):.1f} MiB, end "
            f"{window_mean(plasma, 0.9, 1.0):.1f} MiB, peak {max(plasma):.1f} MiB"
        )
    parts = [sampler.parts[i] for i in keep]
    n = len(parts)
    first, last = parts[int(n * 0.2) : max(int(n * 0.3), int(n * 0.2) + 1)], parts[int(n * 0.9) :]
    print(f"\n{'process':<22} {'start_MiB':>9} {'end_MiB':>8} {'growth':>7}")
    for name in sorted(parts[-1]):
        a = float(np.mean([p.get(name, 0.0) for p in first]))
        b = float(np.mean([p.get(name, 0.0) for p in last]))
        print(f"{name:<22} {a:9.0f} {b:8.0f} {b - a:+7.1f}")
    print(f"samples: {len(s)} over {s[-1][0]:.0f} s; work dir {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
