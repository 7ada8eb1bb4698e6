"""Scale-out: one batch of small images on 1, 2 and 4 region actors (bicubic).

Starts a fresh local Ray for each actor count with logical GPUs (so the actors are
scheduled as GPU actors, ``num_cpus=0``, while torch runs on the CPU) and runs the same
batch through ``pipeline.job.batch.run_batch``. Two rates per run:

- pool: regions per second between the first and the last region completion — the
  shared actor pool's throughput;
- end to end: all regions over the whole batch's wall time (planning, Ray start,
  actor start, ingest, publish included).

Each is printed next to the ideal (the 1-actor rate times the actor count), with the
efficiency. On a machine with C cores the CPU-bound bicubic model cannot scale past C
actors; the table says where it stops.

    python bench/scaleout.py [--images 8] [--size 1024] [--region 512] [--actors 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_inputs(folder: Path, count: int, size: int) -> list[Path]:
    from PIL import Image

    from tests.helpers import synth_image

    paths = []
    for i in range(count):
        path = folder / f"in{i}.png"
        Image.fromarray(synth_image(size, size, seed=i)).save(path)
        paths.append(path)
    return paths


def run_once(inputs: list[Path], out_dir: Path, actors: int, gpus: int, region: int) -> dict:
    import ray

    from pipeline.job.batch import BatchItem, run_batch

    out_dir.mkdir()
    items = [BatchItem(str(p), str(out_dir / f"{p.stem}.tif")) for p in inputs]
    stamps: list[float] = []

    def on_regions(n: int) -> None:
        stamps.extend([time.perf_counter()] * n)

    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        num_gpus=gpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        t0 = time.perf_counter()
        reports = run_batch(
            items,
            base_set=(
                "model.scale=2",
                "tiling.tile_px=128",
                "tiling.overlap_px=16",
                f"store.region_out_px={region}",
                "store.chunk_out_px=256",
                f"run.actors={actors}",
                "run.in_flight_per_actor=2",
                "run.active_jobs=3",
            ),
            progress=False,
            on_regions=on_regions,
        )
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    bad = [r for r in reports if r.status != "done"]
    if bad:
        raise SystemExit(f"batch failed: {bad[0].input}: {bad[0].error}")
    regions = sum(r.regions_total for r in reports)
    pool_s = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    return {
        "actors": actors,
        "regions": regions,
        "wall_s": wall,
        "pool_rate": (len(stamps) - 1) / pool_s,
        "e2e_rate": regions / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024, help="input side, px")
    parser.add_argument("--actors", default="1,2,4")
    parser.add_argument("--gpus", type=int, default=4, help="logical GPUs declared to Ray")
    parser.add_argument("--region", type=int, default=512, help="region (shard) side, output px")
    args = parser.parse_args()
    counts = [int(a) for a in args.actors.split(",")]
    print(
        f"{args.images} images of {args.size}x{args.size} -> x2, bicubic, tile 128/16, "
        f"{args.region}-px regions; {os.cpu_count()} CPU cores, {args.gpus} logical GPUs"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp), args.images, args.size)
        for n in counts:
            row = run_once(inputs, Path(tmp) / f"out{n}", n, args.gpus, args.region)
            rows.append(row)
            print(f"  {n} actor(s): {row['wall_s']:.1f} s", flush=True)
    base_pool, base_e2e = rows[0]["pool_rate"] / counts[0], rows[0]["e2e_rate"] / counts[0]
    print()
    print(
        f"{'actors':>6}{'regions':>9}{'wall s':>9}{'pool reg/s':>12}{'ideal':>8}{'eff':>7}"
        f"{'e2e reg/s':>11}{'ideal':>8}{'eff':>7}"
    )
    for r in rows:
        n = r["actors"]
        print(
            f"{n:>6}{r['regions']:>9}{r['wall_s']:>9.1f}{r['pool_rate']:>12.2f}"
            f"{base_pool * n:>8.2f}{r['pool_rate'] / (base_pool * n):>7.0%}"
            f"{r['e2e_rate']:>11.2f}{base_e2e * n:>8.2f}{r['e2e_rate'] / (base_e2e * n):>7.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
