"""What the video stages take and return: one job's context, sent once, and small tasks.

``VideoJob`` is what every decode, encode and assemble task of one job shares (the
probe's description with every frame's pts, the encoder's settings, where the file is
staged); the executor sends it to the workers once per job. A task names only its
segment (``Segment``) or the last step (``Assemble``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import VideoConfig
from pipeline.runner.tasks import JobContext


@dataclass(frozen=True, eq=False)
class VideoJob(JobContext):
    store_url: str
    info: Any  # pipeline.video.probe.VideoInfo, or a frame sequence's SequenceInfo
    video: VideoConfig
    pix_fmt: str = ""  # the encoder's pixel format
    container: str = ""  # the output's muxer (``container_format``)
    threads: int = 0  # each encoder's threads (assemble needs the same: x265 headers)
    remux: tuple[int, ...] = ()  # stream indices copied packet for packet
    staged: str = ""  # where assemble writes the file before it is renamed into place
    sequence: Any = None  # a frame sequence output's files (SequenceTarget)


@dataclass(frozen=True)
class Segment:
    """Frames [start, end) of the video, segment ``index``: decoded into the store, or
    encoded (written as frame files for a sequence output) from it."""

    index: int
    start: int
    end: int
    skip_existing: bool = False  # a sequence output's resume keeps complete files


@dataclass(frozen=True)
class Assemble:
    """Join the ``segments`` encoded segments (or check a sequence's files)."""

    segments: int


@dataclass(frozen=True)
class Encoded:
    segment: int
    frames: int
    node: str | None = None
    written: int = 0  # frame files written (a sequence output; the rest were complete)
    bytes: int = 0


@dataclass(frozen=True)
class Assembled:
    frames: int
    segments: int
    copied_packets: int = 0
