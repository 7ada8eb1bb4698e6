"""Command line: parse, load the config, run the job, report.

``run_pipeline.py INPUT -o OUTPUT [...]`` upscales; ``batch MANIFEST`` runs many
inputs; ``status TARGET`` reads a job's progress; ``sample PATH`` writes a built-in
synthetic test image; ``weights`` checks S3Diff weights. Errors print as one line and exit non-zero;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.config import load_config
from pipeline.errors import JobFailed, UserError
from pipeline.models import MODELS
from pipeline.stopping import Terminated, install_sigterm_handler

log = logging.getLogger("pipeline")

WEIGHTS_COMMAND = "workers.s3diff.command"  # main(argv) -> exit code


def _add_job_options(p: argparse.ArgumentParser) -> None:
    """Options shared by a single job and a batch."""
    p.add_argument("--config", help="YAML preset (see configs/)")
    p.add_argument("--model", choices=sorted(MODELS), help="upscaler (default: bicubic)")
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
    v.add_argument(
        "--drop-unsupported",
        action="store_true",
        help="leave out streams the output container cannot hold",
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
        prog="run_pipeline.py",
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
    _add_job_options(p)
    return p


def build_batch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_pipeline.py batch",
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
    _add_job_options(p)
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "model.name": args.model,
        "model.scale": args.scale,
        "tiling.tile_px": args.tile,
        "tiling.overlap_px": args.overlap,
        "model.batch_size": args.batch_size,
        "run.actors": args.actors,
        "run.gpus_per_actor": args.gpus_per_actor,
        "run.address": args.address,
        "store.work_dir": args.work_dir,
        "store.keep": True if args.keep_store else None,
        "video.codec": args.codec,
        "video.crf": args.crf,
        "video.preset": args.preset,
        "video.pix_fmt": args.pix_fmt,
        "video.frames": args.frames,
        "video.start_s": args.start,
        "video.end_s": args.end,
        "video.drop_unsupported": True if args.drop_unsupported else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if not debug:
        for noisy in ("ray", "filelock", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _loopback_only() -> None:
    """Make the private local Ray listen on 127.0.0.1 only.

    For a new local cluster Ray advertises the machine's routable address, and its
    services listen there or on every interface. With this switch (read when ``ray`` is
    first imported, so before that) Ray uses the loopback address, and every service
    it starts (GCS, raylet, workers, agents) binds to 127.0.0.1."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _sample(argv: Sequence[str]) -> int:
    from pipeline.sample import write_sample

    p = argparse.ArgumentParser(
        prog="run_pipeline.py sample", description="write the built-in synthetic test image"
    )
    p.add_argument("path", help="where to write it (.png or .tif)")
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT (default 640x480)")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UserError(f"--size expects WIDTHxHEIGHT, got {args.size!r}") from None
    write_sample(args.path, width, height)
    print(f"wrote {args.path} ({width}x{height})")
    return 0


def _weights(argv: Sequence[str]) -> int:
    """The ``weights`` subcommand lives with the S3Diff worker code, named by its path so
    that the driver imports no worker code."""
    return importlib.import_module(WEIGHTS_COMMAND).main(list(argv))


def _batch(argv: Sequence[str]) -> int:
    from pathlib import Path

    from pipeline.batch import (
        default_report_path,
        exit_code,
        format_table,
        read_manifest,
        run_batch,
    )

    args = build_batch_parser().parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    items = read_manifest(args.manifest, args.output_pattern)
    overrides = _overrides(args)
    cfg = load_config(args.config, overrides, args.set)  # bad options fail before any item
    from pipeline.cluster import join_address

    if not join_address(cfg.run.address):  # $RAY_ADDRESS: joins (a submitted batch)
        _loopback_only()
    report = Path(args.report) if args.report else default_report_path(args.manifest)
    reports = run_batch(
        items,
        preset=args.config,
        overrides=overrides,
        base_set=tuple(args.set),
        overwrite=args.overwrite,
        restart=args.restart,
        progress=not args.quiet,
        report_path=report,
    )
    print(format_table(reports))
    print(f"report: {report}")
    code = exit_code(reports)
    bad = [r for r in reports if r.status not in ("done", "skipped")]
    if bad:
        print(
            f"error: {len(bad)} of {len(reports)} item(s) not done: "
            + "; ".join(f"{r.input} ({r.status})" for r in bad[:10]),
            file=sys.stderr,
        )
    return code


def _status(argv: Sequence[str]) -> int:
    from pipeline.status import status_command

    p = argparse.ArgumentParser(
        prog="run_pipeline.py status",
        description="progress of a job from its store (works after the driver died), a "
        "batch report, or a Ray job id",
    )
    p.add_argument("target", help="job store path/URL, output path, batch report, or Ray job id")
    p.add_argument("--address", help="Ray dashboard address, for a Ray job id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    code, text = status_command(args.target, args.address, args.json)
    print(text)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if argv and argv[0] == "sample":
            return _sample(argv[1:])
        if argv and argv[0] == "weights":
            return _weights([a for a in argv[1:] if a != "--debug"])
        if argv and argv[0] == "status":
            return _status(argv[1:])
        if argv and argv[0] == "submit":  # pipeline/submit.py: run it as a Ray Job
            from pipeline.submit import main as submit_main

            return submit_main(argv[1:])
        install_sigterm_handler()
        if argv and argv[0] == "batch":
            return _batch(argv[1:])
        args = build_parser().parse_args(argv)
        _setup_logging(args.debug, args.quiet)
        cfg = load_config(args.config, _overrides(args), args.set)
        from pipeline.cluster import join_address

        if not join_address(cfg.run.address):  # $RAY_ADDRESS: joins (a submitted job)
            _loopback_only()
        from pipeline.run import run_job

        summary = run_job(
            args.input,
            args.output,
            cfg,
            overwrite=args.overwrite,
            restart=args.restart,
            progress=not args.quiet,
        )
        print(summary.line())
        return 0
    except (UserError, JobFailed, Terminated) as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(
            f"error: {type(exc).__name__}: {first} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
