"""Command line: parse, load the config, run the job, report.

``run_pipeline.py INPUT -o OUTPUT [...]`` upscales; ``batch MANIFEST`` runs many
inputs; ``status TARGET`` reads a job's progress; ``sample PATH`` writes a built-in
synthetic test image; ``weights`` checks S3Diff weights; ``qc SOURCE OUTPUT`` measures
flicker, seams and fidelity. Errors print as one line and exit non-zero;
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

from pipeline.arguments import build_batch_parser, build_parser, job_overrides, program_name
from pipeline.config import chooses_model, load_config
from pipeline.errors import JobFailed, TaskBug, UserError, plain
from pipeline.progress_bar import BarLogHandler
from pipeline.quiet import set_quiet
from pipeline.stopping import Terminated, install_sigterm_handler

log = logging.getLogger("pipeline")

WEIGHTS_COMMAND = "workers.s3diff.command"  # main(argv) -> exit code
# (model.weights) -> where S3Diff's weights are, or None; a path lookup, no torch.
FIND_WEIGHTS = "workers.s3diff.locations:find_weights"


def default_model(
    preset: str | None, overrides: dict[str, Any], set_items: Sequence[str]
) -> dict[str, Any]:
    """``overrides``, plus ``model.name=s3diff`` when no model was chosen and S3Diff's
    weights are given or found (flag, $S3DIFF_WEIGHTS, the caches); says which in one
    line. The lookup runs here, on the driver: with ``--address`` the cluster's
    workers must have the weights where this machine finds them."""
    if chooses_model(preset, overrides, set_items):
        return overrides
    cfg = load_config(preset, overrides, list(set_items))
    module_name, function = FIND_WEIGHTS.split(":")
    found = getattr(importlib.import_module(module_name), function)(cfg.model.weights)
    if found or cfg.model.weights:
        where = found or cfg.model.weights
        log.info("model: s3diff (weights: %s; --model bicubic for plain bicubic)", where)
        return {**overrides, "model.name": "s3diff"}
    log.info("model: bicubic (for S3Diff: 'run_pipeline.py weights download', or --weights DIR)")
    return overrides


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = BarLogHandler(sys.stderr)  # messages above the progress bar, not on it
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler])
    if not debug:
        for noisy in ("ray", "filelock", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet and not debug:
        set_quiet()  # library warnings too, here and in the Ray workers


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
        prog=program_name("sample"), description="write the built-in synthetic test image"
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
    overrides = job_overrides(args)
    load_config(args.config, overrides, args.set)  # bad options fail before any item
    overrides = default_model(args.config, overrides, args.set)
    cfg = load_config(args.config, overrides, args.set)
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
        prog=program_name("status"),
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
        if argv and argv[0] == "qc":  # pipeline/qc: flicker, seams, fidelity of an output
            from pipeline.qc.command import qc_command

            return qc_command(argv[1:])
        if argv and argv[0] == "submit":  # pipeline/submit.py: run it as a Ray Job
            from pipeline.submit import main as submit_main

            return submit_main(argv[1:])
        install_sigterm_handler()
        if argv and argv[0] == "batch":
            return _batch(argv[1:])
        args = build_parser().parse_args(argv)
        _setup_logging(args.debug, args.quiet)
        overrides = job_overrides(args)
        load_config(args.config, overrides, args.set)  # bad options fail first
        cfg = load_config(args.config, default_model(args.config, overrides, args.set), args.set)
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
    except (UserError, JobFailed, Terminated, TaskBug) as exc:
        if debug:
            raise
        print(f"error: {plain(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        first = (plain(str(exc)).strip().splitlines() or [""])[0]
        print(
            f"error: {type(exc).__name__}: {first} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
