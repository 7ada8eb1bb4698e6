"""Probe: what is the input? Kind from content (magic bytes), size, channels, depth.

Reads headers only; pixels are copied by ingest tasks. Every refusal is a UserError
with a message that names the file and says what to do instead.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.image_meta import ImageMeta, read_ome_zarr, read_pillow, read_tiff
from pipeline.storage import ObjectPath, as_path, head_identity, open_input, open_zarr

SUPPORTED_DTYPES = ("uint8", "uint16")
IMAGE_KINDS = ("png", "jpeg", "tiff", "zarr")
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)


@dataclass(frozen=True)
class ImageInfo:
    """A still image to be upscaled; ``layout`` says how a Zarr input's axes are ordered."""

    path: str
    kind: str  # png | jpeg | tiff | zarr
    height: int
    width: int
    channels: int  # 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    dtype: str  # uint8 | uint16
    layout: str = "hwc"  # hwc | hw | chw (Zarr/TIFF views)
    lead: int = 0  # leading singleton axes of a Zarr/TIFF view (OME TCZYX with T=Z=1)
    zarr_path: str = ""  # array inside a Zarr group ("0" for OME-Zarr)
    geo_tags: dict[int, Any] = field(default_factory=dict)
    meta: ImageMeta = field(default_factory=ImageMeta)  # ICC, resolution, OME sizes

    @property
    def frames(self) -> int:
        return 1


def sniff(path: Path | ObjectPath) -> str:
    """Kind of input from its first bytes (or Zarr metadata for a directory)."""
    if path.is_dir():
        if (
            (path / "zarr.json").exists()
            or (path / ".zarray").exists()
            or (path / ".zgroup").exists()
        ):
            return "zarr"
        raise UserError(f"{path} is a directory but not a Zarr array or group")
    with open_input(path) as fh:
        head = fh.read(16)
    if not head:
        raise UserError(f"{path} is empty (0 bytes); give an image or a video file")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return "unknown"


def identity(path: Path | ObjectPath) -> dict[str, Any]:
    """What makes an input the same input on resume: path, size, mtime, header hash."""
    if isinstance(path, ObjectPath):
        return head_identity(str(path))
    target = path / "zarr.json" if path.is_dir() else path
    if path.is_dir() and not target.exists():
        target = next((path / n for n in (".zarray", ".zgroup") if (path / n).exists()), path)
    stat = os.stat(target)
    digest = hashlib.sha256()
    with open(target, "rb") as fh:
        digest.update(fh.read(1 << 16))
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "header_sha256": digest.hexdigest(),
    }


def _check_dtype(path: Path, dtype: str) -> str:
    if dtype not in SUPPORTED_DTYPES:
        raise UserError(
            f"{path} has {dtype} samples; only 8- and 16-bit unsigned images are supported "
            "(convert it to uint8 or uint16)"
        )
    return dtype


def _check_size(path: Path, height: int, width: int, channels: int) -> None:
    if height < 1 or width < 1:
        raise UserError(f"{path} has no pixels ({width}x{height})")
    if channels not in (1, 2, 3, 4):
        raise UserError(
            f"{path} has {channels} channels; expected 1 (gray), 2 (gray+alpha), 3 (RGB) "
            "or 4 (RGBA)"
        )


def _png_header(path: Path) -> tuple[int, int, int, int]:
    with open_input(path) as fh:
        data = fh.read(33)
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise UserError(f"{path} is not a valid PNG (no IHDR header); the file may be damaged")
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color


def _check_decode_size(
    path: Path, kind: str, width: int, height: int, channels: int, itemsize: int, max_decode_mb: int
) -> None:
    decoded_mb = width * height * channels * itemsize / 2**20
    if decoded_mb > max_decode_mb:
        raise UserError(
            f"{path} is {width}x{height}: decoding this {kind.upper()} needs "
            f"{decoded_mb:.0f} MiB, over the {max_decode_mb} MiB limit; convert it to a tiled "
            "TIFF (read lazily) or raise output.max_input_decode_mb"
        )


def _probe_pillow(path: Path, kind: str, max_decode_mb: int) -> ImageInfo:
    from PIL import Image

    if kind == "png":
        width, height, depth, color = _png_header(path)
        if depth == 16 and color in (2, 6):
            raise UserError(
                f"{path} is a 16-bit RGB PNG, which cannot be read without losing precision; "
                "convert it to a 16-bit TIFF"
            )
        # Before Pillow touches the data: a header may claim any size (decompression bomb).
        _check_decode_size(
            path,
            kind,
            width,
            height,
            4 if color in (4, 6) else 3,
            2 if depth == 16 else 1,
            max_decode_mb,
        )
    # Our own decoded-size limit below replaces Pillow's pixel-count bomb check, which
    # would otherwise refuse legitimate large scans with a less useful message.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with open_input(path) as fh, Image.open(fh) as im:
            width, height = im.size
            mode = im.mode
            meta = read_pillow(im.info)
    except OSError as exc:
        raise UserError(f"{path} could not be read as {kind.upper()}: {exc}") from None
    channels = {"L": 1, "1": 1, "I;16": 1, "I;16B": 1, "I": 1, "LA": 2, "RGBA": 4, "PA": 4}
    chans = channels.get(mode, 4 if mode == "P" else 3)
    if mode == "P":
        with open_input(path) as fh, Image.open(fh) as im:
            chans = 4 if "transparency" in im.info else 3
    dtype = "uint16" if mode.startswith("I") else "uint8"
    _check_decode_size(
        path, kind, width, height, chans, 2 if dtype == "uint16" else 1, max_decode_mb
    )
    _check_size(path, height, width, chans)
    return ImageInfo(str(path), kind, height, width, chans, dtype, meta=meta)


def _classify_array(
    path: Path, shape: tuple[int, ...], axes: str | None
) -> tuple[int, int, int, str]:
    """(height, width, channels, layout) of a 2-D or 3-D array."""
    if len(shape) == 2:
        return shape[0], shape[1], 1, "hw"
    if len(shape) == 3:
        if axes and axes.upper().startswith(("C", "S")) and not axes.upper().endswith("S"):
            return shape[1], shape[2], shape[0], "chw"
        if shape[-1] <= 4:
            return shape[0], shape[1], shape[2], "hwc"
        if shape[0] <= 4:
            return shape[1], shape[2], shape[0], "chw"
    raise UserError(
        f"{path} holds an array of shape {shape}; expected (H, W), (H, W, C) or (C, H, W) "
        "with C <= 4"
    )


def _squeeze_lead(
    path: Path, shape: tuple[int, ...], axes: str | None
) -> tuple[int, tuple[int, ...], str | None]:
    """Drop leading singleton axes (T=Z=1 of OME data); refuse real stacks."""
    lead = 0
    while len(shape) > 3 and shape[0] == 1:
        shape, lead = shape[1:], lead + 1
        axes = axes[1:] if axes else axes
    if len(shape) > 3:
        raise UserError(
            f"{path} holds a stack of shape {shape}; give a single 2-D image "
            "(one plane, optionally with channels)"
        )
    return lead, shape, axes


def _probe_tiff(path: Path) -> ImageInfo:
    import tifffile

    try:
        with open_input(path) as fh, tifffile.TiffFile(fh) as tif:
            series = tif.series[0]
            shape, dtype, axes = tuple(series.shape), str(series.dtype), series.axes
            page = tif.pages[0]
            geo = {tag.code: tag.value for tag in page.tags.values() if tag.code in GEO_TAGS}
            meta = read_tiff(tif)
    except (tifffile.TiffFileError, ValueError, IndexError, struct.error, OSError) as exc:
        raise UserError(f"{path} is not a readable TIFF ({exc}); the file may be damaged") from None
    lead, shape, axes = _squeeze_lead(path, shape, axes)
    height, width, channels, layout = _classify_array(path, shape, axes)
    _check_size(path, height, width, channels)
    return ImageInfo(
        str(path),
        "tiff",
        height,
        width,
        channels,
        _check_dtype(path, dtype),
        layout,
        lead=lead,
        geo_tags=geo,
        meta=meta,
    )


def _probe_zarr(path: Path) -> ImageInfo:
    import zarr

    try:
        node = open_zarr(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise UserError(f"{path} is not a readable Zarr store ({exc})") from None
    inner = ""
    axes = None
    meta = ImageMeta()
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        ms = (attrs.get("ome") or attrs).get("multiscales")
        if not ms:
            raise UserError(
                f"{path} is a Zarr group without OME multiscales; point at the array inside it"
            )
        inner = ms[0]["datasets"][0]["path"]
        axes = "".join(a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", []))
        meta = read_ome_zarr(ms[0], attrs.get("ome") or attrs, attrs)
        node = node[inner]
    lead, shape, axes = _squeeze_lead(path, tuple(node.shape), axes)
    height, width, channels, layout = _classify_array(path, shape, axes)
    _check_size(path, height, width, channels)
    return ImageInfo(
        str(path),
        "zarr",
        height,
        width,
        channels,
        _check_dtype(path, str(node.dtype)),
        layout,
        lead=lead,
        zarr_path=inner,
        meta=meta,
    )


def probe(path: str | Path, max_decode_mb: int = 2048) -> ImageInfo:
    """Inspect an input and say what it is, or refuse it with an actionable message."""
    p = as_path(path)
    if not p.exists():
        raise UserError(f"input {p} does not exist")
    kind = sniff(p)
    if kind in ("png", "jpeg"):
        return _probe_pillow(p, kind, max_decode_mb)
    if kind == "tiff":
        return _probe_tiff(p)
    if kind == "zarr":
        return _probe_zarr(p)
    raise UserError(
        f"{p} is not a supported input: expected PNG, JPEG, TIFF or a Zarr array "
        "(detected from the file's first bytes, not its extension)"
    )
