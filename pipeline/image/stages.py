"""The image path's stages: ingest bands, build the pyramid, write the output file.

Each is a :class:`Stage` subclass: its target and the task it takes
(``pipeline.image.tasks``); every one is a 1-CPU task.

    ingest   image row bands -> ``input``
    pyramid  one block of a pyramid level from the level below
    write    the output file's pixels (TIFF, PNG/JPEG at once; OME-Zarr by blocks)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.image.tasks import Band, Block, WholeFile
from pipeline.runner.stage import Stage


@dataclass(frozen=True)
class IngestStage(Stage):
    name: str = "ingest"
    target: str = "pipeline.image.ingest:ingest_band"
    takes: Any = Band
    priority: int = 1


@dataclass(frozen=True)
class PyramidStage(Stage):
    name: str = "pyramid"
    target: str = "pipeline.image.publish:pyramid_block"
    takes: Any = Block
    priority: int = 4


@dataclass(frozen=True)
class WriteTiffStage(Stage):
    name: str = "write"
    target: str = "pipeline.image.publish:write_tiff_file"
    takes: Any = WholeFile
    priority: int = 4


@dataclass(frozen=True)
class WriteSmallStage(Stage):
    name: str = "write"
    target: str = "pipeline.image.publish:write_small_file"
    takes: Any = WholeFile
    priority: int = 4


@dataclass(frozen=True)
class WriteOmeStage(Stage):
    name: str = "write"
    target: str = "pipeline.image.publish:copy_to_ome"
    takes: Any = Block
    priority: int = 4


INGEST = IngestStage()
PYRAMID = PyramidStage()
WRITE_TIFF = WriteTiffStage()
WRITE_SMALL = WriteSmallStage()
WRITE_OME = WriteOmeStage()
