"""``run_pipeline.py weights check|convert [DIR]``: the weights subcommand.

The driver's CLI (``pipeline/cli.py``) hands the subcommand's arguments to :func:`main`
by dotted path, without importing worker code itself. A UserError (e.g. no weights
directory) propagates to the CLI, which prints it as one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.arguments import program_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("weights"),
        description="check an S3Diff weights directory, or convert its pickles to "
        "safetensors (sd-turbo/ from Hugging Face stabilityai/sd-turbo, s3diff.pkl and "
        "de_net.pth from zhangap/S3Diff)",
    )
    p.add_argument("action", choices=["check", "convert"])
    p.add_argument(
        "dir",
        nargs="?",
        help="weights directory (default: $S3DIFF_WEIGHTS, then ~/.cache/s3diff-sr/weights)",
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
    from workers.s3diff.locations import resolve_weights_dir

    root = resolve_weights_dir(args.dir)
    if args.action == "convert":
        for path in convert_to_safetensors(root):
            print(f"wrote {path}")
        return 0
    problems = check_weights(root, True if args.full_size else None)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"error: {len(problems)} problem(s) in {root}", file=sys.stderr)
        return 2
    print(f"ok: {root} holds usable S3Diff weights")
    return 0
