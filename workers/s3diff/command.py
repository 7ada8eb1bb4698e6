"""``run_pipeline.py weights check|convert|download [DIR]``: the weights subcommand.

The driver's CLI (``pipeline/cli/main.py``) hands the subcommand's arguments to
:func:`main` through a stage (``pipeline/job/weights.py``), without importing worker
code itself. A UserError (e.g. no weights directory) propagates to the CLI, which prints
it as one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.arguments import program_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("weights"),
        description="download S3Diff's weights (Hugging Face stabilityai/sd-turbo and "
        "zhangap/S3Diff; into the Hugging Face cache, or DIR), check them, or convert a "
        "directory's pickles to safetensors",
    )
    p.add_argument("action", choices=["check", "convert", "download"])
    p.add_argument(
        "dir",
        nargs="?",
        help="weights directory (default: $S3DIFF_WEIGHTS, ~/.cache/s3diff-sr/weights, then "
        "the Hugging Face cache; download: the Hugging Face cache)",
    )
    p.add_argument(
        "--full-size",
        action="store_true",
        help="require the published full-size checkpoints, key by key",
    )
    return p


def main(argv: list[str]) -> int:
    """Run the subcommand on ``argv`` (the arguments after ``weights``); the exit code:
    0 usable or converted, 2 problems found (each printed as ``problem: ...``)."""
    args = build_parser().parse_args(argv)
    # torch loads with these, after parsing, so that --help and usage errors stay quick.
    from workers.s3diff.check import check_weights
    from workers.s3diff.checkpoint import convert_to_safetensors
    from workers.s3diff.locations import resolve_weights, resolve_weights_dir

    if args.action == "convert":
        for path in convert_to_safetensors(resolve_weights_dir(args.dir)):
            print(f"wrote {path}")
        return 0
    if args.action == "download":
        from pathlib import Path

        from workers.s3diff.download import download_weights

        paths = download_weights(Path(args.dir).expanduser() if args.dir else None)
    else:
        paths = resolve_weights(args.dir)
    root = f"{paths.sd_turbo} and {paths.root}" if paths.sd_turbo_dir else str(paths.root)
    problems = check_weights(paths, True if args.full_size else None)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"error: {len(problems)} problem(s) in {root}", file=sys.stderr)
        return 2
    print(f"ok: {root} holds usable S3Diff weights")
    return 0
