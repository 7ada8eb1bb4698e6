"""The whole pipeline (Ray, Zarr job store, S3Diff actors, encoder) on a GPU, measured.

Run by bench/gpu_pipeline.sh after it unpacked the bundle (bench/gpu_bundle.py). With
full-size random weights, bf16 (precision auto) and compiled (configs/s3diff-gpu.yaml):

  a. a WxH clip with AAC audio (made here with PyAV), x4: wall s per output frame, fps;
  b. a 2048x2048 image x4: output MP/s;
  c. GPU busy fraction (NVML, sampled every 0.1 s in a thread) during a and b, and the
     pipeline's tiles/s over bench/gpu_model.py's tiles/s (same tile, batch, bf16, compile);
  d. model output MP/s for LR tiles of 128, 160, 192, 256 px with 32 px overlap (eager
     bf16 unless --compile-sizes).

    python bench/gpu_pipeline.py --weights DIR --out OUT
    python bench/gpu_pipeline.py --cpu-smoke --weights tests/data/golden/weights --out OUT
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class Busy:
    """NVML GPU utilisation sampled in a thread; mean per named phase."""

    def __init__(self, interval: float = 0.1):
        self.samples: list[tuple[float, int]] = []
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.name = pynvml.nvmlDeviceGetName(self.handle)
            self._util = lambda: pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        except Exception as exc:  # no NVML (CPU dry run)
            self.name = f"no NVML ({type(exc).__name__})"
        self._stop = threading.Event()
        if self.handle is not None:
            threading.Thread(target=self._run, args=(interval,), daemon=True).start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._util()))
            time.sleep(interval)

    def fraction(self, t0: float, t1: float) -> float | None:
        vals = [u for t, u in self.samples if t0 <= t <= t1]
        return sum(vals) / len(vals) / 100 if vals else None


def run_job(args, src: Path, dst: Path, log: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), str(src), "-o", str(dst),
           "--overwrite", *args.job_args, *extra]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=args.job_timeout)
    t1 = time.perf_counter()
    tail = log.read_text().strip().splitlines()[-3:]
    print("\n".join("  " + line[-200:] for line in tail), flush=True)
    return {"rc": rc.returncode, "t0": t0, "t1": t1, "wall_s": t1 - t0}


def tiles_for(width: int, height: int, tile: int, overlap: int) -> int:
    step = tile - overlap
    return math.ceil(max(width - overlap, 1) / step) * math.ceil(max(height - overlap, 1) / step)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, tiny weights, CPU")
    p.add_argument("--clip", default="960x540")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--image", type=int, default=2048)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--sizes", default="128,160,192,256")
    p.add_argument("--compile-sizes", default="", help="tile sizes to time compiled in d")
    p.add_argument("--skip", default="", help="comma list of a,b,c,d to skip")
    p.add_argument("--job-timeout", type=float, default=300)
    args = p.parse_args()
    skip = set(args.skip.split(",")) - {""}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"argv": sys.argv[1:]}
    import torch

    busy = Busy()
    results["gpu"] = busy.name if busy.handle else "none"
    print(f"GPU: {results['gpu']}; torch {torch.__version__}", flush=True)
    if args.cpu_smoke:
        args.clip, args.frames, args.image, args.batch = "64x48", 6, 96, 2
        args.sizes, args.tile, args.overlap = "48,64", 48, 24
        config = []
        device = torch.device("cpu")
        args.job_args = ["--model", "s3diff", "--set", f"model.weights={args.weights}",
                         "--tile", str(args.tile), "--overlap", str(args.overlap),
                         "--batch-size", str(args.batch), "--actors", "1"]  # fmt: skip
    else:
        config = ["--config", str(ROOT / "configs" / "s3diff-gpu.yaml")]
        device = torch.device("cuda")
        args.job_args = [*config, "--set", f"model.weights={args.weights}",
                         "--tile", str(args.tile), "--overlap", str(args.overlap),
                         "--batch-size", str(args.batch)]  # fmt: skip
    width, height = (int(v) for v in args.clip.split("x"))

    if "a" not in skip:
        from video import make_clip

        clip = out / "clip.mp4"
        t = time.perf_counter()
        make_clip(clip, width, height, args.frames)
        print(f"made {clip.name}: {width}x{height}, {args.frames} frames + AAC "
              f"({time.perf_counter() - t:.1f} s)", flush=True)  # fmt: skip
        job = run_job(args, clip, out / "clip_x4.mp4", out / "job_video.log", [])
        if job["rc"] != 0:
            results["a_video"] = job
            print(f"a: job failed (rc {job['rc']}), see job_video.log", flush=True)
            return 1
        import av

        with av.open(str(out / "clip_x4.mp4")) as c:
            v = c.streams.video[0]
            n = sum(1 for _ in c.decode(v))
            audio = len(c.streams.audio)
            job.update(out_size=f"{v.width}x{v.height}", frames=n, audio_streams=audio)
        job["s_per_frame"] = job["wall_s"] / max(n, 1)
        job["fps"] = n / job["wall_s"]
        job["tiles"] = n * tiles_for(width, height, args.tile, args.overlap)
        job["tiles_per_s"] = job["tiles"] / job["wall_s"]
        job["busy"] = busy.fraction(job["t0"], job["t1"])
        results["a_video"] = job
        print(f"a: {n} frames {job['out_size']} (audio streams {audio}) in "
              f"{job['wall_s']:.1f} s: {job['s_per_frame']:.3f} s/frame, {job['fps']:.2f} fps,"
              f" GPU busy {job['busy']}", flush=True)  # fmt: skip

    if "b" not in skip:
        img = out / "image.png"
        subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "sample", str(img),
                        "--size", f"{args.image}x{args.image}"], check=True)  # fmt: skip
        job = run_job(args, img, out / "image_x4.tif", out / "job_image.log", [])
        if job["rc"] != 0:
            results["b_image"] = job
            print(f"b: job failed (rc {job['rc']}), see job_image.log", flush=True)
            return 1
        mp = (4 * args.image) ** 2 / 1e6
        job["out_mp"] = mp
        job["mp_per_s"] = mp / job["wall_s"]
        job["tiles"] = tiles_for(args.image, args.image, args.tile, args.overlap)
        job["tiles_per_s"] = job["tiles"] / job["wall_s"]
        job["busy"] = busy.fraction(job["t0"], job["t1"])
        results["b_image"] = job
        print(f"b: {args.image}^2 x4 = {mp:.1f} MP in {job['wall_s']:.1f} s: "
              f"{job['mp_per_s']:.2f} MP/s, GPU busy {job['busy']}", flush=True)  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))

    if not ({"c", "d"} <= skip):
        from gpu_model import build_random_s3diff, time_config

        tiny = args.cpu_smoke
        t = time.perf_counter()
        model = build_random_s3diff(tiny, device, *((8, 4) if tiny else (32, 16)))
        model.place(device, torch.float32 if tiny else torch.bfloat16)
        print(f"model alone built in {time.perf_counter() - t:.1f} s", flush=True)
        iters = 1 if tiny else 5
        if "d" not in skip:
            rows = []
            compiled = {int(s) for s in args.compile_sizes.split(",") if s}
            for size in [int(s) for s in args.sizes.split(",")]:
                if size in compiled:
                    model.enable_compile(mode="default")
                ms, peak, _ = time_config(model, device, args.batch, size, True, False, iters, 2)
                new_px = ((size - args.overlap) * 4) ** 2  # output px each tile adds
                row = {"tile": size, "compiled": size in compiled, "ms_per_tile": ms,
                       "out_mp_per_s": new_px / ms / 1e3, "peak_gib": peak}  # fmt: skip
                rows.append(row)
                print(f"d: LR tile {size} (overlap {args.overlap}): {ms:.1f} ms/tile, "
                      f"{row['out_mp_per_s']:.2f} output MP/s", flush=True)  # fmt: skip
            results["d_tiles"] = rows
        if "c" not in skip:
            if not tiny:
                model.enable_compile(mode="default")
            ms, _, _ = time_config(model, device, args.batch, args.tile, True, False, iters, 3)
            alone = 1e3 / ms
            results["c_model_tiles_per_s"] = alone
            for key in ("a_video", "b_image"):
                if key in results:
                    results[key]["fed_ratio"] = results[key]["tiles_per_s"] / alone
            print(f"c: model alone {alone:.2f} tiles/s (tile {args.tile}, batch {args.batch}); "
                  + ", ".join(f"{k} fed {results[k]['fed_ratio']:.2f}"
                              for k in ("a_video", "b_image") if k in results),
                  flush=True)  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {out / 'results.json'}")
    bad = [k for k in ("a_video", "b_image") if k in results and results[k]["rc"] != 0]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
