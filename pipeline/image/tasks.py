"""What the image stages take: one job's context, sent once, and small tasks.

``ImageJob`` is what every ingest and publish task of one job shares (the probe's
description, the output's format, metadata, pyramid shapes and where the file is
staged); a task names only its rows (``Band``), its block of a level (``Block``) or the
whole file (``WholeFile``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.runner.tasks import JobContext


@dataclass(frozen=True, eq=False)
class ImageJob(JobContext):
    store_url: str
    info: Any  # pipeline.image.probe.ImageInfo
    fmt: str  # zarr | tiff | png | jpeg
    staged: str  # where the writer puts the file before it is renamed into place
    shapes: tuple[tuple[int, int], ...]  # the output pyramid's levels, (h, w)
    tile_px: int
    jpeg_quality: int
    meta: Any = None  # the output's ImageMeta (the input's, scaled)
    geo: Any = None  # GeoTIFF tags to write


@dataclass(frozen=True)
class Band:
    """Input rows [y0, y1) (whole input chunks) -> ``input``."""

    y0: int
    y1: int


@dataclass(frozen=True)
class Block:
    """Block [y0:y1, x0:x1] of pyramid level ``level``."""

    level: int
    y0: int
    y1: int
    x0: int
    x1: int


@dataclass(frozen=True)
class WholeFile:
    """The output file at once (TIFF, PNG, JPEG)."""
