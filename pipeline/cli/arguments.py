"""The command line's arguments: the parsers of a job and a batch, and the config
values their flags give. Used by the CLI and by ``submit`` (which checks a command line
before sending it to a cluster)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pipeline.config import FLAGS
from pipeline.models import MODELS


def program_name(sub: str = "") -> str:
    """The name the user typed (``sr-pipeline`` or ``run_pipeline.py``), for usage lines;
    ``run_pipeline.py`` when there is none (``python -c``, ``python -m``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not name or name in ("-c", "-m", "__main__.py") or name.startswith("python"):
        name = "run_pipeline.py"
    return f"{name} {sub}" if sub else name


def add_job_options(p: argparse.ArgumentParser) -> None:
    """Options shared by a single job and a batch."""
    p.add_argument("--config", help="YAML preset (see configs/)")
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        help="upscaler (default: s3diff when its weights are found, else bicubic)",
    )
    p.add_argument(
        "--weights",
        metavar="DIR",
        help="S3Diff weights directory (default: $S3DIFF_WEIGHTS, then the caches; "
        "see 'weights download')",
    )
    p.add_argument("--scale", type=int, help="upscale factor (default 4)")
    p.add_argument("--tile", type=int, help="tile size in input pixels (model default)")
    p.add_argument("--overlap", type=int, help="tile overlap in input pixels (model default)")
    p.add_argument("--batch-size", type=int, help="tiles per model call")
    p.add_argument("--actors", type=int, help="region workers (default: one per GPU or CPU)")
    p.add_argument("--gpus-per-actor", type=float, help="GPUs per worker when GPUs exist")
    p.add_argument("--address", help="join a Ray cluster (e.g. auto or ray://head:10001)")
    p.add_argument(
        "--work-dir", help="where the job store lives (path or URL); default: next to the output"
    )
    v = p.add_argument_group("video")
    v.add_argument("--codec", help="video encoder (libx264, libx265, libsvtav1, prores_ks, ffv1)")
    v.add_argument("--crf", type=int, help="encoder quality (x264/x265/svt-av1 CRF)")
    v.add_argument("--preset", help="encoder preset")
    v.add_argument("--pix-fmt", help="encoder pixel format (default: follow the source)")
    v.add_argument("--frames", help="process frames A:B only (indices, B exclusive)")
    v.add_argument("--start", type=float, help="process from this time (seconds)")
    v.add_argument("--end", type=float, help="process up to this time (seconds)")
    v.add_argument("--fps", help="frame rate of a frame sequence input (default 24; 24000/1001)")
    v.add_argument(
        "--start-number",
        type=int,
        help="first file number of a sequence output (default: the source's, or 0 for a video)",
    )
    v.add_argument(
        "--drop-unsupported",
        action="store_true",
        help="leave out streams, cover art, attachments and dispositions the output "
        "container cannot hold",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard this job's store and start over instead of resuming",
    )
    p.add_argument(
        "--keep-store",
        action="store_true",
        help="keep the job store after success (default: delete it)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set store.region_out_px=4096",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or stage messages")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name(),
        description="Upscale a video or a gigapixel image on Ray, tiled and blended without "
        "seams, resumable. Subcommands: 'batch MANIFEST' runs many inputs in one job; "
        "'status STORE|OUTPUT|REPORT' shows a job's progress; 'submit' sends a command to "
        "a Ray cluster as a Ray Job; 'sample PATH' writes a test image; 'weights "
        "check|convert [DIR]' checks S3Diff weights. Exit codes: 0 done, 2 bad input or "
        "config, 3 a region or item failed, 75 stopped by SIGTERM (rerun to resume), "
        "130 interrupted.",
    )
    p.add_argument("input", help="image (PNG, JPEG, TIFF/BigTIFF/OME-TIFF), Zarr array or video")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output path; format from the extension: .zarr .tif .png .jpg .mp4 .mkv .mov",
    )
    add_job_options(p)
    return p


def build_batch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("batch"),
        description="Run many inputs in one job over one actor pool. Finished outputs are "
        "skipped and unfinished ones resume, so the command can be repeated (cron). Exit "
        "0 only when every item is done or skipped; 3 when some failed (listed); 75 when "
        "stopped by SIGTERM.",
    )
    p.add_argument(
        "manifest",
        help="YAML/JSON list of {input, output, set}, a directory, or a glob (quote it)",
    )
    p.add_argument(
        "--output-pattern",
        help="for a directory or glob: e.g. 'out/{stem}_x4.tif' ({stem} {name} {suffix} {parent})",
    )
    p.add_argument(
        "--report",
        help="JSON report path (default: MANIFEST.report.json, or ./batch-report.json)",
    )
    add_job_options(p)
    return p


def job_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config values given by dedicated flags (config.FLAGS), keyed "section.key"."""
    out: dict[str, Any] = {}
    for key, flag in FLAGS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None and value is not False:  # an unset store_true flag gives none
            out[key] = value
    return out
