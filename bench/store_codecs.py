#!/usr/bin/env python
"""Scratch frames in the job store: which codec, which chunking.

A video job writes every input frame once (decode) and reads it once (the region
worker), and writes every output frame once (the region worker) and reads it once (the
encoder); scratch is bounded by the decode window, so speed counts, not size. This
writes and reads frames the way the pipeline does (the output as one shard per region,
the input in chunks) with each candidate codec and prints write and read MB/s, the
stored size relative to the raw frames, and each row's write+read time relative to
zarr's own default (zstd level 0, the store's codec before ``store.codec``), all in the
same run. The last two rows change the chunking of the uncompressed store.

    python bench/store_codecs.py               # 1920x1080 -> 3840x2160 frames, 4 each
    python bench/store_codecs.py --quick       # 960x540 -> 1920x1080, 2 each
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import SCRATCH_CODECS  # noqa: E402
from pipeline.image.synthetic import sample_image  # noqa: E402
from pipeline.pure.tiling import shard_geometry  # noqa: E402
from pipeline.store.jobstore import scratch_codecs  # noqa: E402


def frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """Picture-like frames: the built-in test pattern, bicubic x2 (smooth like model
    output), with a little sensor noise, shifted per frame."""
    import torch
    import torch.nn.functional as F

    base = sample_image(width // 2, height // 2)
    t = torch.from_numpy(base.astype(np.float32)).permute(2, 0, 1)[None]
    up = F.interpolate(t, scale_factor=2, mode="bicubic", align_corners=False)[0]
    big = up.permute(1, 2, 0).clamp(0, 255).numpy()
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        noisy = np.roll(big, 7 * i, axis=1) + rng.normal(0, 2.0, big.shape)
        out.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    return out


def measure(codec: str, shots: list[np.ndarray], region: int, chunk: int) -> dict:
    import zarr

    h, w, c = shots[0].shape
    root = Path(tempfile.mkdtemp(prefix="codec-", dir=ROOT / "bench" / "_data"))
    try:
        arr = zarr.create_array(
            str(root / "a.zarr"),
            shape=(len(shots), h, w, c),
            dtype="uint8",
            shards=(1, region, region, c),
            chunks=(1, chunk, chunk, c),
            fill_value=0,
            compressors=scratch_codecs(codec),
        )
        t0 = time.perf_counter()
        for f, frame in enumerate(shots):  # one shard (region) per write, as the workers do
            for y in range(0, h, region):
                for x in range(0, w, region):
                    arr[f, y : y + region, x : x + region] = frame[y : y + region, x : x + region]
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for f in range(len(shots)):  # whole frames, as the encoder reads them
            back = arr[f]
        read_s = time.perf_counter() - t0
        assert np.array_equal(back, shots[-1])
        size = int(
            subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True).stdout.split()[
                0
            ]
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mb = sum(s.nbytes for s in shots) / 1e6
    return {
        "codec": codec,
        "write": mb / write_s,
        "read": mb / read_s,
        "t": write_s + read_s,
        "ratio": size / (mb * 1e6),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="best of N per row")
    args = ap.parse_args()
    w, h, n = (1920, 1080, 2) if args.quick else (3840, 2160, 4)
    (ROOT / "bench" / "_data").mkdir(parents=True, exist_ok=True)
    shots = frames(w, h, n)
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    # The pipeline's geometry for this frame: one region (shard) a frame, its chunks.
    shard, chunk = shard_geometry(1, max(w, h), 512)
    print(
        f"commit {rev}, load {os.getloadavg()[0]:.2f}; {n} frames {w}x{h} uint8; "
        f"shard {shard} (the whole frame), best of {args.repeat}"
    )
    cases = [(c, chunk) for c in SCRATCH_CODECS] + [("none", chunk // 2), ("none", shard)]
    rows = []
    for codec, ch in cases:
        runs = [measure(codec, shots, shard, ch) for _ in range(args.repeat)]
        rows.append(min(runs, key=lambda r: r["t"]) | {"chunk": ch})
    base = rows[0]["t"]
    print(
        f"{'codec':14} {'chunk':>6} {'write MB/s':>10} {'read MB/s':>10} {'size':>6} "
        f"{'time vs ' + rows[0]['codec']:>15}"
    )
    for r in rows:
        print(
            f"{r['codec']:14} {r['chunk']:6d} {r['write']:10.0f} {r['read']:10.0f} "
            f"{r['ratio']:6.2f} {r['t'] / base:15.2f}"
        )


if __name__ == "__main__":
    main()
