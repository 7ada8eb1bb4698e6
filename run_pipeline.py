"""Thin CLI entry point: see pipeline/cli.py (also installed as ``sr-pipeline``)."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
