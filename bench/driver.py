"""Driver CPU per frame: what one job's driver process spends on scheduling, not pixels.

A long video of tiny frames (32x24, H.264) is upscaled x2 with bicubic on a local Ray
with two logical GPUs (two region workers, ``num_cpus=0``), so the pixel work is small
and the driver's own cost shows: submitting and settling every call, the store's flags,
progress, conditioning. The figure is the driver process's CPU time (user + system, all
of its threads, Ray's core worker threads included) over the ``pipeline.upscale`` call,
divided by the frames; Ray's start is outside it. Each row runs in a fresh process, at
two lengths, for this tree and for a baseline commit taken with ``git archive`` into
``bench/_data`` in the same invocation (a ratio on the same machine, same load).

    python bench/driver.py [--frames 1200,4800] [--baseline 066a923]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "_data"


def make_video(path: Path, frames: int) -> None:
    import av
    import numpy as np

    y, x = np.mgrid[0:24, 0:32]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        stream.options = {"crf": "20", "g": "48"}
        for i in range(frames):
            rgb = np.stack([(x * 8 + i) % 256, (y * 10 + 2 * i) % 256, (x + y + i) % 256], -1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def child(code_root: str, frames: int) -> dict:
    sys.path.insert(0, code_root)
    import ray

    import pipeline

    assert pipeline.__file__.startswith(code_root), pipeline.__file__
    src = DATA / f"driver_{frames}.mp4"
    if not src.exists():
        make_video(src, frames)
    work = Path(tempfile.mkdtemp(prefix="drv-", dir=DATA))
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    profile = None
    if os.environ.get("DRIVER_PROFILE"):
        import cProfile

        profile = cProfile.Profile(time.thread_time)
        profile.enable()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    pipeline.upscale(
        src,
        work / "out.mkv",
        model="bicubic",
        scale=2,
    )
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if profile is not None:
        profile.disable()
        profile.dump_stats(os.environ["DRIVER_PROFILE"])
    ray.shutdown()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"frames": frames, "cpu_s": cpu, "wall_s": wall}


def run_row(code_root: Path, frames: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(code_root), "--frames", str(frames)],
        capture_output=True,
        text=True,
        env=env,
        cwd=code_root,
    )
    if out.returncode:
        sys.exit(f"row failed ({code_root}, {frames}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", default="1200,4800")
    ap.add_argument("--baseline", default="066a923", help="commit to compare ('' for none)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, int(args.frames))))
        return
    DATA.mkdir(parents=True, exist_ok=True)
    lengths = [int(n) for n in args.frames.split(",")]
    roots = [("this tree", ROOT)]
    if args.baseline:
        base = Path(tempfile.mkdtemp(prefix="driver-base-", dir=DATA))
        tar = subprocess.run(
            ["git", "archive", args.baseline], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=tar, check=True)
        roots.insert(0, (f"baseline {args.baseline}", base))
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    state = " (+ uncommitted changes)" if dirty else ""
    print(f"commit {rev}{state}; load {os.getloadavg()[0]:.2f}")
    print("| code | frames | driver CPU s | driver CPU ms/frame | wall s |")
    print("|---|---|---|---|---|")
    for name, root in roots:
        for n in lengths:
            r = run_row(root, n)
            ms = 1000 * r["cpu_s"] / r["frames"]
            print(f"| {name} | {n} | {r['cpu_s']:.1f} | {ms:.2f} | {r['wall_s']:.1f} |", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
