#!/usr/bin/env python
"""DPX sequence -> DPX sequence (bicubic x2): the pipeline against FFmpeg, same frames.

A 10-bit DPX shot numbered from 1001 (FFmpeg's test pattern, written by FFmpeg's DPX
encoder) is upscaled x2 with bicubic and written as a 10-bit DPX sequence, by

- FFmpeg alone (the baseline, in the same run): ``ffmpeg -start_number 1001 -i
  in/f.%06d.dpx -vf scale=iw*2:ih*2:flags=bicubic -start_number 1001 out/f.%06d.dpx``,
  the ffmpeg binary from imageio-ffmpeg;
- the pipeline's CLI on its default runner (a private local Ray), and on the in-process
  runner (``run.runner=local``: the same graph without Ray's start-up).

Every command is pinned to the same ``--cpus`` CPUs (default 2: the goal is the pipeline
within 1.5x of FFmpeg on 2 cores). Prints wall time, frames/s, CPU seconds, peak RSS of
the process tree and the ratios to FFmpeg; the header names the commit and the load average, since a
loaded machine slows every row.

    python bench/sequences.py               # 1920x1080 -> 3840x2160, 48 frames
    python bench/sequences.py --quick       # 480x270, 24 frames: a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "_data" / "sequences"

from bench.video import measure  # noqa: E402


def measured(cmd: list[str]) -> dict:
    """``measure`` plus the CPU seconds (user + sys) of the processes it waited for: on a
    loaded machine CPU time compares better than wall time (Ray's daemons, reaped by
    others, are not counted)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = measure(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return r | {"cpu_s": cpu}


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def make_shot(folder: Path, width: int, height: int, frames: int) -> Path:
    """10-bit DPX frames 1001.. of FFmpeg's moving test pattern (made once, then reused)."""
    pattern = folder / "f.%06d.dpx"
    if len(list(folder.glob("f.*.dpx"))) == frames:
        return pattern
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
         f"testsrc2=size={width}x{height}:rate=24", "-frames:v", str(frames), "-pix_fmt",
         "gbrp10le", "-start_number", "1001", str(pattern)],
        check=True,
    )  # fmt: skip
    return pattern


def pinned(cmd: list[str], cpus: int) -> list[str]:
    """``cmd`` restricted to the first ``cpus`` CPUs (taskset), children included."""
    if shutil.which("taskset"):
        return ["taskset", "-c", f"0-{cpus - 1}", *cmd]
    return cmd


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "pipeline", "workers", "run_pipeline.py")
    return git("rev-parse", "--short", "HEAD") + (" (+uncommitted changes)" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--frames", type=int, default=None)
    a = ap.parse_args()
    width, height, frames = (480, 270, 24) if a.quick else (1920, 1080, 48)
    frames = a.frames or frames
    src = make_shot(DATA / f"in_{width}x{height}_{frames}", width, height, frames)
    load = os.getloadavg()
    rows = []

    out = fresh(DATA / "out_ffmpeg")
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-start_number", "1001", "-i", str(src),
           "-vf", "scale=iw*2:ih*2:flags=bicubic", "-start_number", "1001",
           str(out / "f.%06d.dpx")]  # fmt: skip
    rows.append(("ffmpeg", measured(pinned(cmd, a.cpus)), out))
    for name, extra in (("pipeline (Ray)", []), ("pipeline (in-process)", ["--set",
                        "run.runner=local"])):  # fmt: skip
        out = fresh(DATA / f"out_{len(rows)}")
        cmd = [sys.executable, str(ROOT / "run_pipeline.py"), str(src), "-o",
               str(out / "f.%06d.dpx"), "--model", "bicubic", "--scale", "2", "--quiet",
               *extra]  # fmt: skip
        rows.append((name, measured(pinned(cmd, a.cpus)), out))

    print(f"\nDPX 10-bit sequence -> DPX, bicubic x2, {width}x{height} -> {2 * width}x"
          f"{2 * height}, {frames} frames, {a.cpus} CPUs; commit {commit()}; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start")  # fmt: skip
    print(f"{'run':22} {'wall s':>7} {'fps':>7} {'CPU s':>7} {'peak RSS GiB':>13} "
          f"{'files':>6} {'vs ffmpeg':>10} {'CPU vs':>7}")  # fmt: skip
    base, base_cpu = rows[0][1]["wall_s"], max(rows[0][1]["cpu_s"], 1e-3)
    for name, r, out in rows:
        files = len(list(out.glob("f.*.dpx")))
        flag = "" if r["rc"] == 0 and files == frames else "  FAILED"
        print(f"{name:22} {r['wall_s']:7.1f} {frames / r['wall_s']:7.2f} {r['cpu_s']:7.1f} "
              f"{r['peak_gib']:13.2f} {files:6d} {r['wall_s'] / base:9.2f}x "
              f"{r['cpu_s'] / base_cpu:6.1f}x{flag}")  # fmt: skip


if __name__ == "__main__":
    main()
