"""Thin CLI entry point: see pipeline/cli/main.py (also installed as ``sr-pipeline``)."""

import sys

from pipeline.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
