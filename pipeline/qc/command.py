"""``run_pipeline.py qc SOURCE OUTPUT [--json] [--tile PX --overlap PX] [--plots DIR]``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.models import MODELS, get_spec


def build_qc_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_pipeline.py qc",
        description=(
            "measure flicker, tile seams and fidelity of OUTPUT against its SOURCE, each "
            "relative to the bicubic upscale of the source (docs/QUALITY.md)"
        ),
    )
    p.add_argument("source", type=Path, help="the low-resolution input (image or video)")
    p.add_argument("output", type=Path, help="its upscale (same kind, integer scale)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--model",
        default="bicubic",
        choices=sorted(MODELS),
        help="take --tile/--overlap defaults from this model (default bicubic)",
    )
    p.add_argument("--tile", type=int, help="the job's tile, LR px (default: the model's)")
    p.add_argument("--overlap", type=int, help="the job's tile overlap, LR px")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write flicker.png, seams.png")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument(
        "--stride",
        type=int,
        default=1,
        metavar="N",
        help="measure only frames k*N (against frame k*N-1); the rest are decoded only",
    )
    p.add_argument(
        "--seam-every", type=int, default=5, metavar="N", help="seams on every Nth frame (5)"
    )
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def qc_command(argv: Sequence[str]) -> int:
    from pipeline.qc.measure import QcOptions, measure
    from pipeline.qc.report import table, write_plots

    args = build_qc_parser().parse_args(argv)
    spec = get_spec(args.model)
    opts = QcOptions(
        tile_px=args.tile if args.tile is not None else spec.default_tile_px,
        overlap_px=args.overlap if args.overlap is not None else spec.default_overlap_px,
        max_frames=args.max_frames,
        seam_every=args.seam_every,
        stride=args.stride,
    )
    report, plots = measure(args.source, args.output, opts)
    if args.plots is not None:
        report["plots"] = [str(p) for p in write_plots(plots, args.plots)]
    print(json.dumps(report) if args.json else table(report))
    return 0
