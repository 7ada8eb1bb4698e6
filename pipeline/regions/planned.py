"""A planned job: what ``pipeline.job.plan`` found out and fixed before anything runs,
and what every graph is built from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig
from pipeline.models import ModelSpec
from pipeline.store.jobstore import Layout
from pipeline.store.urls import ObjectPath


@dataclass(frozen=True)
class Plan:
    input_path: str
    output_path: Path | ObjectPath  # ObjectPath: an object-store URL
    config: JobConfig
    model: ModelSpec
    info: Any  # the probe's ImageInfo, VideoInfo or SequenceInfo
    layout: Layout
    fmt: str  # zarr | tiff | png | jpeg | video
    spec: dict[str, Any]
    store_url: str
    segments: tuple[tuple[int, int], ...] = ()  # video decode segments (frame ranges)
    remux: tuple[int, ...] = ()  # video: stream indices copied packet for packet
    pix_fmt: str = ""  # video: encoder pixel format
    sequence: Any = None  # a frame sequence output's files (SequenceTarget)

    @property
    def is_video(self) -> bool:
        return self.fmt in ("video", "sequence")
