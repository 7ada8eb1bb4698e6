#!/usr/bin/env python
"""The region worker's time outside the model, per 4K frame, before and after.

One 960x540 frame -> 3840x2160 at S3Diff's tiling (128 px LR tiles, 32 px overlap,
batch 4), bicubic as the model, one worker in this process, frames in a real job store.
Each row runs in its own child process over the code of one commit:

- the baseline commit (default: the last commit before issue 22), its worker's
  ``process`` (read, model, blend, convert and write in turn);
- this tree's ``upscale`` (what the in-process runner calls; ``process`` before);
- this tree's Ray path: ``compute`` on one thread and ``io`` on two (the actor's default
  thread and its io thread group), two regions in flight, as the Ray executor sends them.

Per 4K frame: wall seconds, model seconds, and wall minus model, the time the model
waited on the actor's critical path (on a GPU the model is fast and this is what idles
it). The ratio column is each row's outside-model time over the baseline's.

    python bench/region_worker.py                  # 6 frames a row
    python bench/region_worker.py --frames 3       # quicker
    python bench/region_worker.py --baseline REV   # another baseline commit
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "40338ea"  # main before issue 22
LR_W, LR_H, SCALE, TILE, OVERLAP = 960, 540, 4, 128, 32


def child(code_root: str, mode: str, frames: int, codec: str | None) -> dict:
    """Runs in a child process whose sys.path starts with ``code_root``."""
    sys.path.insert(0, code_root)
    import dataclasses

    import numpy as np

    from pipeline.config import JobConfig, ModelConfig, TilingConfig
    from pipeline.image.synthetic import sample_image
    from pipeline.pure.tiling import shard_geometry
    from pipeline.runner.tasks import JobRef, RegionTask
    from pipeline.store.jobstore import JobStore, Layout
    from workers.region_worker import RegionWorker

    cfg = JobConfig(
        model=ModelConfig(name="bicubic", scale=SCALE, batch_size=4, device="cpu"),
        tiling=TilingConfig(tile_px=TILE, overlap_px=OVERLAP),
    )
    shard, chunk = shard_geometry(SCALE, max(LR_W, LR_H) * SCALE, 512)  # a whole frame
    extra = (
        {"codec": codec}
        if codec and "codec" in {f.name for f in dataclasses.fields(Layout)}
        else {}
    )
    layout = Layout(frames, LR_H, LR_W, 3, "uint8", SCALE, shard, chunk, **extra)
    work = Path(tempfile.mkdtemp(prefix="rw-", dir=ROOT / "bench" / "_data"))
    try:
        url = str(work / "job.zarr")
        store = JobStore.create(url, {}, layout)
        frame = sample_image(LR_W, LR_H)
        inp = store.array("input")
        for f in range(frames):
            inp[f] = np.roll(frame, 5 * f, axis=1)
        job = JobRef(url, cfg, 1, 0)
        worker = RegionWorker(cfg.model, threads=1)
        # The in-process call: ``upscale`` (``process`` in trees before it had its name).
        upscale = getattr(worker, "upscale", None) or worker.process
        upscale(RegionTask(0, 0, 0), job)  # warm-up: windows, torch kernels
        tasks = [RegionTask(f, 0, 0) for f in range(frames)]
        t0 = time.perf_counter()
        if mode == "process":
            results = [upscale(t, job) for t in tasks]
        else:
            results = _pipelined(worker, tasks, job)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model = sum(r["model_s"] for r in results)
    return {"wall": wall / frames, "model": model / frames}


def _pipelined(worker, tasks, job) -> list[dict]:
    """What the Ray executor does with an actor: compute calls in order on one thread,
    io calls on a pool of two, at most two regions in flight."""
    todo: deque = deque()
    ready = threading.Semaphore(0)
    results = []

    def computer() -> None:
        for _ in tasks:
            ready.acquire()
            worker.compute(todo.popleft(), job)

    thread = threading.Thread(target=computer)
    thread.start()
    with ThreadPoolExecutor(2) as io:
        flights: deque = deque()
        pending = deque(tasks)
        while pending or flights:
            while pending and len(flights) < 2:
                task = pending.popleft()
                todo.append(task)
                ready.release()
                flights.append(io.submit(worker.io, task, job))
            results.append(flights.popleft().result())
    thread.join()
    return results


def run_row(code_root: Path, mode: str, frames: int, codec: str | None) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(code_root), mode, str(frames), codec or ""],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        root, mode, frames, codec = sys.argv[2:6]
        print(json.dumps(child(root, mode, int(frames), codec or None)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--baseline", default=BASELINE)
    args = ap.parse_args()
    (ROOT / "bench" / "_data").mkdir(parents=True, exist_ok=True)
    base_root = Path(tempfile.mkdtemp(prefix="baseline-", dir=ROOT / "bench" / "_data"))
    try:
        archive = subprocess.run(
            ["git", "archive", args.baseline], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base_root)], input=archive, check=True)
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = (
            " (+ uncommitted changes)"
            if subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode
            else ""
        )
        print(
            f"commit {rev}{dirty} vs baseline {args.baseline}; load {os.getloadavg()[0]:.2f}; "
            f"{LR_W}x{LR_H} -> {LR_W * SCALE}x{LR_H * SCALE}, tile {TILE}/{OVERLAP}, "
            f"bicubic, {args.frames} frames a row, 1 torch thread"
        )
        rows = [
            (
                f"baseline {args.baseline}: process",
                run_row(base_root, "process", args.frames, None),
            ),
            ("this tree: process (store zstd-0)", run_row(ROOT, "process", args.frames, "zstd-0")),
            ("this tree: process (store none)", run_row(ROOT, "process", args.frames, "none")),
            ("this tree: Ray path (store none)", run_row(ROOT, "pipelined", args.frames, "none")),
        ]
    finally:
        shutil.rmtree(base_root, ignore_errors=True)
    mp = LR_W * LR_H * SCALE * SCALE / 1e6
    base_out = rows[0][1]["wall"] - rows[0][1]["model"]
    print(
        f"{'per 4K frame':36} {'wall s':>7} {'model s':>8} {'outside s':>10} "
        f"{'outside/MP':>11} {'vs baseline':>12}"
    )
    for name, r in rows:
        outside = r["wall"] - r["model"]
        print(
            f"{name:36} {r['wall']:7.3f} {r['model']:8.3f} {outside:10.3f} "
            f"{outside / mp * 1000:9.1f}ms {outside / base_out:12.2f}"
        )


if __name__ == "__main__":
    main()
