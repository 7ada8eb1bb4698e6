"""File suffixes and what they mean: the one table the planner, the writers, batch
listings, ``qc`` and ``sample`` read.

Outputs take their format from their suffix (the user names the file); inputs are told
apart by their contents (``pipeline.image.probe.sniff``), so input suffixes only pick
which files of a folder or listing a batch takes. Pure: no imports beyond the standard
library.
"""

from __future__ import annotations

from pathlib import PurePath

# Image outputs: suffix -> the writer's format (pipeline.image.publish). ".ome.zarr" is
# there for the messages that list them: a path's suffix is ".zarr".
IMAGE_OUTPUTS = {
    ".zarr": "zarr",
    ".ome.zarr": "zarr",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
}
# Video outputs: suffix -> FFmpeg muxer (pipeline.video.container).
VIDEO_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".mov": "mov"}
# The suffix advice names for each muxer, in the order it names them.
CONTAINER_SUFFIX = {"matroska": ".mkv", "mp4": ".mp4", "mov": ".mov"}
# Frame-sequence outputs (out/frame.%06d.exr): suffix -> FFmpeg image encoder.
SEQUENCE_CODECS = {".dpx": "dpx", ".exr": "exr", ".tif": "tiff", ".tiff": "tiff", ".png": "png"}

# Single-file images the readers of ``qc`` open (Pillow, tifffile).
IMAGE_FILES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
# What a batch takes from a folder or an object-store listing.
BATCH_INPUTS = IMAGE_FILES | {".zarr", ".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm"}

# The outputs messages suggest.
IMAGE_OUTPUT_HINT = ".zarr .tif .png .jpg"
VIDEO_OUTPUT_HINT = ".mp4 .mkv .mov"
SEQUENCE_OUTPUT_HINT = "out/frame.%06d.exr .dpx .tif .png"


def suffix(path: str | PurePath) -> str:
    """A path's or URL's suffix, lower case (``PurePath`` rules: the last one)."""
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    return PurePath(name).suffix.lower()


def image_format(path: str | PurePath) -> str | None:
    """The image format a path's suffix names (zarr | tiff | png | jpeg), or None."""
    return IMAGE_OUTPUTS.get(suffix(path))
