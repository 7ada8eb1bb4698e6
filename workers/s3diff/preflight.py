"""The weights check the driver runs where the workers run, before any work.

The driver declares :func:`weights_problems` as a stage (``pipeline/job/weights.py``)
and runs it where the workers run, so the driver never imports worker code and the
check sees the worker machines' files and ``$S3DIFF_WEIGHTS``.
"""

from __future__ import annotations

from pipeline.errors import UserError
from workers.s3diff.check import check_weights
from workers.s3diff.locations import resolve_weights


def weights_problems(weights: str | None) -> list[str]:
    """Every problem of the weights directory ``weights`` resolves to ([] when usable);
    a directory that cannot be found is one problem, not an exception."""
    try:
        return check_weights(resolve_weights(weights))
    except UserError as exc:
        return [str(exc)]
