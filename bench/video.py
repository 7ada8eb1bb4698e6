#!/usr/bin/env python
"""Video benchmark: the pipeline end to end vs. the simplest single-process loop, and vs.
the ffmpeg command line when it is installed.

One 720p clip with AAC audio (generated once with PyAV, cached under ``bench/_data/``),
bicubic x2, the same encoder settings everywhere (libx264, ``--crf``, ``--preset``):

* pipeline: ``python run_pipeline.py IN -o OUT.mp4 --model bicubic --scale 2 ...``
  (starts its own local Ray);
* loop: PyAV decode -> one torch bicubic call per frame -> PyAV encode, audio copied;
* ffmpeg: ``ffmpeg -i IN -vf scale=2*iw:2*ih:flags=bicubic -c:v libx264 ... -c:a copy``.

Each runs as a subprocess while the summed RSS of its process tree is sampled; the
table gives wall time, frames per second, peak RSS and the ratio to the loop, all
measured in the same run. A script that prints a table, not a test.

    python bench/video.py                 # 1280x720, 300 frames
    python bench/video.py --quick         # 640x360, 60 frames
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "_data"
GIB = 2**30


def make_clip(path: Path, width: int, height: int, frames: int) -> Path:
    """30 fps H.264 (GOP 30) with stereo AAC: moving waves plus noise, all frames differ."""
    import av

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"crf": "18", "preset": "veryfast", "g": "30"}
        au = out.add_stream("aac", rate=48000)
        au.layout = "stereo"
        for i in range(frames):
            r = 128 + 90 * np.sin((x + 4 * i) / 37.0) * np.cos(y / 53.0)
            g = 128 + 90 * np.sin((y - 3 * i) / 29.0)
            b = 128 + 90 * np.cos((x + y + 5 * i) / 71.0)
            img = np.stack([r, g, b], -1) + rng.normal(0, 6, (height, width, 3))
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        samples = int(frames / 30 * 48000)
        for start in range(0, samples, 1024):
            t = (np.arange(1024) + start) / 48000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            af = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            af.sample_rate, af.pts = 48000, start
            for packet in au.encode(af):
                out.mux(packet)
        for packet in au.encode(None):
            out.mux(packet)
    tmp.rename(path)
    return path


def loop_baseline(src: str, dst: str, crf: str, preset: str) -> None:
    """The simplest correct single process: decode, one bicubic call a frame, encode."""
    import av
    import torch
    import torch.nn.functional as F

    with av.open(src) as inp, av.open(dst, "w") as out:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0]
        vs = out.add_stream("libx264", rate=vin.average_rate)
        vs.time_base = vin.time_base
        vs.width, vs.height = vin.codec_context.width * 2, vin.codec_context.height * 2
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": crf, "preset": preset}
        aout = out.add_stream_from_template(ain)
        for packet in inp.demux(vin, ain):
            if packet.stream.type == "audio":
                if packet.size:
                    packet.stream = aout
                    out.mux(packet)
                continue
            for frame in packet.decode():
                arr = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                up = F.interpolate(
                    arr[None].float() / 255, scale_factor=2, mode="bicubic", align_corners=False
                )
                rgb = (up[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                new = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                new.pts, new.time_base = frame.pts, frame.time_base
                for p in vs.encode(new):
                    out.mux(p)
        for p in vs.encode(None):
            out.mux(p)


def measure(cmd: list[str], interval: float = 0.2) -> dict:
    """Run a command; wall time and the peak summed RSS of its whole process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak, stop = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    return {"rc": proc.returncode, "wall_s": wall, "peak_gib": peak / GIB}


def frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="640x360, 60 frames")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--crf", default="18")
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--extra", default="", help="extra pipeline CLI arguments")
    args = ap.parse_args()
    w, h, n = (640, 360, 60) if args.quick else (1280, 720, args.frames)
    src = make_clip(DATA / f"clip_{w}x{h}_{n}.mp4", w, h, n)
    out = DATA / "out"
    out.mkdir(exist_ok=True)
    py = sys.executable
    runs = {
        "loop (1 process)": [
            py,
            __file__,
            "_loop",
            str(src),
            str(out / "loop.mp4"),
            args.crf,
            args.preset,
        ],
        "pipeline": [
            py,
            str(ROOT / "run_pipeline.py"),
            str(src),
            "-o",
            str(out / "pipe.mp4"),
            "--model",
            "bicubic",
            "--scale",
            "2",
            "--codec",
            "libx264",
            "--crf",
            args.crf,
            "--preset",
            args.preset,
            "--overwrite",
            "--quiet",
            *args.extra.split(),
        ],
    }
    targets = {"loop (1 process)": out / "loop.mp4", "pipeline": out / "pipe.mp4"}
    if shutil.which("ffmpeg"):
        runs["ffmpeg CLI"] = [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(src),
            "-vf",
            "scale=2*iw:2*ih:flags=bicubic",
            "-c:v",
            "libx264",
            "-crf",
            args.crf,
            "-preset",
            args.preset,
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "copy",
            str(out / "ffmpeg.mp4"),
        ]
        targets["ffmpeg CLI"] = out / "ffmpeg.mp4"
    results = {}
    for name, cmd in runs.items():
        results[name] = measure(cmd)
        results[name]["frames"] = frame_count(targets[name]) if results[name]["rc"] == 0 else 0
    base = results["loop (1 process)"]["wall_s"]
    print(
        f"\n{w}x{h} -> {2 * w}x{2 * h}, {n} frames + AAC, libx264 crf {args.crf} preset "
        f"{args.preset}, bicubic x2, {psutil.cpu_count()} CPUs"
    )
    print(
        f"{'run':<18} {'frames':>6} {'wall s':>8} {'fps':>7} {'peak RSS GiB':>13} "
        f"{'wall / loop':>12}"
    )
    for name, r in results.items():
        fps = r["frames"] / r["wall_s"] if r["frames"] else 0.0
        print(
            f"{name:<18} {r['frames']:>6} {r['wall_s']:>8.1f} {fps:>7.2f} "
            f"{r['peak_gib']:>13.2f} {r['wall_s'] / base:>12.2f}"
        )
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_loop":
        loop_baseline(*sys.argv[2:6])
    else:
        main()
