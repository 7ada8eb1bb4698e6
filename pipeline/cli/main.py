"""Command line: parse, load the config, run the job, report.

``run_pipeline.py INPUT -o OUTPUT [...]`` upscales; ``batch MANIFEST`` runs many
inputs; ``status TARGET`` reads a job's progress; ``sample PATH`` writes a built-in
synthetic test image; ``weights`` checks S3Diff weights; ``qc SOURCE OUTPUT`` measures
flicker, seams and fidelity. Errors print as one line and exit non-zero;
``--debug`` shows the traceback.

Jobs and batches run through the Python API (``pipeline.api``); this layer parses,
sets up logging, draws the progress bars from the jobs' events, prints results and
turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence

from pipeline.bars import BarLogHandler, BarRenderer
from pipeline.cli.arguments import build_batch_parser, build_parser, job_overrides, program_name
from pipeline.errors import Error, UserError, plain
from pipeline.runner.quiet import set_quiet
from pipeline.runner.stopping import install_sigterm_handler


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = BarLogHandler(sys.stderr)  # messages above the progress bar, not on it
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler])
    if not debug:
        for noisy in ("ray", "filelock", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet and not debug:
        set_quiet()  # library warnings too, here and in the Ray workers


def _sample(argv: Sequence[str]) -> int:
    from pipeline.image.synthetic import write_sample

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
    """The ``weights`` subcommand lives with the S3Diff worker code, run as a stage
    (``pipeline.job.weights``) so that the driver imports no worker code."""
    from pipeline.job.weights import weights_command

    return weights_command(argv)


@contextlib.contextmanager
def _bars(quiet: bool, stages: tuple[str, ...] = ("upscale", "publish")):
    """The CLI's progress bars (None with --quiet), closed however the job ends."""
    bars = None if quiet else BarRenderer(stages)
    try:
        yield bars
    finally:
        if bars is not None:
            bars.close()


def _batch(argv: Sequence[str]) -> int:
    from pathlib import Path

    from pipeline.api import run_many
    from pipeline.job.batch import default_report_path, read_manifest

    args = build_batch_parser().parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    items = read_manifest(args.manifest, args.output_pattern)
    report = Path(args.report) if args.report else default_report_path(args.manifest)
    with _bars(args.quiet, ("batch",)) as bars:
        result = run_many(
            items,
            args.config,
            job_overrides(args),
            tuple(args.set),
            report=report,
            overwrite=args.overwrite,
            restart=args.restart,
            progress=bars,
        )
    print(result.table())
    print(f"report: {report}")
    line = result.error_line()
    if line:
        print(f"error: {line}", file=sys.stderr)
    return result.exit_code


def _job(argv: Sequence[str]) -> int:
    from pipeline.api import run_one

    args = build_parser().parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    with _bars(args.quiet) as bars:
        result = run_one(
            args.input,
            args.output,
            args.config,
            job_overrides(args),
            tuple(args.set),
            overwrite=args.overwrite,
            restart=args.restart,
            progress=bars,
        )
    print(result.line())
    return 0


def _status(argv: Sequence[str]) -> int:
    from pipeline.cli.status import status_command

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
        if argv and argv[0] == "submit":  # pipeline/cli/submit.py: run it as a Ray Job
            from pipeline.cli.submit import main as submit_main

            return submit_main(argv[1:])
        install_sigterm_handler()
        if argv and argv[0] == "batch":
            return _batch(argv[1:])
        return _job(argv)
    except Error as exc:
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
