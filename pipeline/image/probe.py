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

import numpy as np

from pipeline.errors import UserError, is_decode_error
from pipeline.image.metadata import ImageMeta, read_ome_zarr, read_pillow, read_tiff
from pipeline.image.scaled_meta import geo_from_zarr
from pipeline.store.urls import ObjectPath, as_path, head_identity, open_input, open_zarr

# Unsigned samples are scaled by their type's maximum; signed and float samples keep
# their own range (the worker normalises by a range and writes the same dtype back).
# All of these are exact in float32, the worker's arithmetic.
SUPPORTED_DTYPES = ("uint8", "uint16", "int8", "int16", "float32")
IMAGE_KINDS = ("png", "jpeg", "tiff", "zarr")
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)


@dataclass(frozen=True)
class ImageInfo:
    """A still image to be upscaled; ``layout`` says how a Zarr input's axes are ordered."""

    path: str
    kind: str  # png | jpeg | tiff | zarr
    height: int
    width: int
    channels: int  # as stored in the job store (a palette expanded to RGB(A))
    dtype: str  # one of SUPPORTED_DTYPES
    layout: str = "hwc"  # hwc | hw | chw (Zarr/TIFF views)
    lead: int = 0  # leading singleton axes of a Zarr/TIFF view (OME TCZYX with T=Z=1)
    zarr_path: str = ""  # array inside a Zarr group ("0" for OME-Zarr)
    series: int = 0  # TIFF: the series that is the image (its level 0 is read)
    skipped: str = ""  # TIFF: what else the file holds and is not read (one log line)
    geo_tags: dict[int, Any] = field(default_factory=dict)
    # Pixel semantics, from what the file says (never guessed from the channel count):
    alpha: bool = False  # the last channel is alpha (TIFF ExtraSamples, PNG LA/RGBA/tRNS)
    premultiplied: bool = False  # that alpha is associated (TIFF ExtraSamples = 1)
    rgb: bool = True  # three colour channels are RGB; False: independent bands (per channel)
    orientation: int = 1  # EXIF/TIFF Orientation (1-8); height/width are the upright size
    palette: str = ""  # "": none; "tiff": expand the TIFF colour map; "png": Pillow's
    meta: ImageMeta = field(default_factory=ImageMeta)  # ICC, resolution, OME sizes

    @property
    def frames(self) -> int:
        return 1

    @property
    def stored_hw(self) -> tuple[int, int]:
        """(height, width) as the file stores them, before the orientation is applied."""
        if self.orientation >= 5:
            return self.width, self.height
        return self.height, self.width


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


MAX_CHANNELS = 64


def _check_dtype(path: Path, dtype: str) -> str:
    if dtype not in SUPPORTED_DTYPES:
        raise UserError(
            f"{path} has {dtype} samples; supported are {', '.join(SUPPORTED_DTYPES)} "
            "(convert it to one of them, e.g. float32 or int16)"
        )
    return dtype


def _check_size(path: Path, height: int, width: int, channels: int) -> None:
    if height < 1 or width < 1:
        raise UserError(f"{path} has no pixels ({width}x{height})")
    if not 1 <= channels <= MAX_CHANNELS:
        raise UserError(
            f"{path} has {channels} channels; at most {MAX_CHANNELS} are supported "
            "(each channel beyond RGB(A) is upscaled on its own)"
        )


def exif_orientation(exif: Any) -> int:
    """The EXIF Orientation (tag 274) as 1..8; 1 when absent or out of range."""
    try:
        value = int(exif.get(274, 1))
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def compression_problem(code: int) -> str | None:
    """Why TIFF compression ``code`` cannot be decoded here, or None when it can."""
    import tifffile

    if code in tifffile.TIFF.DECOMPRESSORS:
        return None
    try:
        name = tifffile.COMPRESSION(code).name
    except ValueError:
        name = "unknown"
    return (
        f"its compression {name} (TIFF code {code}) cannot be decoded by tifffile with the "
        "installed imagecodecs; convert it to an LZW, Deflate or ZSTD TIFF (or install an "
        "imagecodecs build that has this codec)"
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
            transparent = "transparency" in im.info
            orientation = exif_orientation(im.getexif())
            meta = read_pillow(im.info)
    except OSError as exc:
        raise UserError(f"{path} could not be read as {kind.upper()}: {exc}") from None
    chans, alpha, palette = pillow_channels(mode, transparent)
    dtype = "uint16" if mode.startswith("I") else "uint8"
    _check_decode_size(
        path, kind, width, height, chans, 2 if dtype == "uint16" else 1, max_decode_mb
    )
    _check_size(path, height, width, chans)
    if orientation >= 5:
        width, height = height, width
    return ImageInfo(
        str(path),
        kind,
        height,
        width,
        chans,
        dtype,
        alpha=alpha,
        orientation=orientation,
        palette="png" if palette else "",
        meta=meta,
    )


def pillow_channels(mode: str, transparent: bool) -> tuple[int, bool, bool]:
    """(channels, alpha, palette) that ingest's ``decode_pillow`` gives for a Pillow mode.

    A palette is expanded to RGB, or RGBA when it has transparency; a tRNS colour of a
    gray or RGB PNG becomes an alpha channel, as PNG viewers show it.
    """
    if mode in ("P", "PA"):
        alpha = mode == "PA" or transparent
        return (4 if alpha else 3), alpha, True
    if mode in ("L", "1"):
        return (2, True, False) if transparent and mode == "L" else (1, False, False)
    if mode.startswith("I"):
        return (2, True, False) if transparent else (1, False, False)
    if mode == "LA":
        return 2, True, False
    if mode == "RGBA" or (mode == "RGB" and transparent):
        return 4, True, False
    return 3, False, False


def _classify_array(
    path: Path, shape: tuple[int, ...], axes: str | None
) -> tuple[int, int, int, str]:
    """(height, width, channels, layout) of a 2-D or 3-D array.

    With axes (TIFF series, OME-Zarr) a channel/sample axis (C, S) is the channel axis
    and Z or T stacks are refused; otherwise (no axes, or tifffile's unknown I/Q) the
    channel axis is the short one at either end.
    """
    if len(shape) == 2:
        return shape[0], shape[1], 1, "hw"
    if len(shape) == 3:
        up = axes.upper() if axes else ""
        if up and up[0] in "CS" and up[1:] == "YX":
            return shape[1], shape[2], shape[0], "chw"
        if up and up[:2] == "YX" and up[2] in "CS":
            return shape[0], shape[1], shape[2], "hwc"
        if any(a in "ZT" for a in up):
            raise UserError(
                f"{path} holds a {up} stack of shape {shape}: Z and T planes are not "
                "upscaled plane by plane; extract one plane (a 2-D image, optionally "
                "with channels)"
            )
        if shape[-1] <= 4 or shape[-1] < min(shape[0], shape[1], MAX_CHANNELS + 1):
            return shape[0], shape[1], shape[2], "hwc"
        if shape[0] <= 4 or shape[0] < min(shape[1], shape[2], MAX_CHANNELS + 1):
            return shape[1], shape[2], shape[0], "chw"
    raise UserError(
        f"{path} holds an array of shape {shape}; expected (H, W), (H, W, C) or (C, H, W) "
        f"with C <= {MAX_CHANNELS}"
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
            f"{path} holds a stack of shape {shape}{f' ({axes})' if axes else ''}: Z and T "
            "planes are not upscaled plane by plane; give a single 2-D image (one plane, "
            "optionally with channels)"
        )
    return lead, shape, axes


PHOTOMETRIC_RGB = (2, 6)  # RGB; YCbCr (JPEG-in-TIFF), which tifffile decodes to RGB
PHOTOMETRIC_PALETTE = 3
ALPHA_EXTRASAMPLES = (1, 2)  # associated, unassociated alpha


def tiff_semantics(
    photometric: int, extrasamples: tuple[int, ...], channels: int
) -> tuple[bool, bool]:
    """(alpha, rgb) for a TIFF page: alpha only when ExtraSamples says the last sample is
    alpha; RGB only for an RGB/YCbCr photometric with three colour samples."""
    alpha = bool(extrasamples) and int(extrasamples[-1]) in ALPHA_EXTRASAMPLES and channels > 1
    rgb = int(photometric) in PHOTOMETRIC_RGB and channels - alpha == 3
    return alpha, rgb


def _probe_tiff(path: Path) -> ImageInfo:
    import tifffile

    try:
        with open_input(path) as fh, tifffile.TiffFile(fh) as tif:
            index, skipped = image_series(tif.series)
            series = tif.series[index]
            shape, dtype, axes = tuple(series.shape), str(series.dtype), series.axes
            page = series.keyframe
            geo = {tag.code: tag.value for tag in page.tags.values() if tag.code in GEO_TAGS}
            compression = int(page.compression)
            photometric = int(page.photometric)
            extrasamples = tuple(int(e) for e in page.extrasamples)
            orientation = exif_orientation({274: page.tags.valueof(274, 1)})
            is_ome = tif.is_ome
            meta = read_tiff(tif, page)
    except (tifffile.TiffFileError, ValueError, IndexError, struct.error, OSError) as exc:
        if not _from_the_file(exc):
            raise  # raised by our own code: a bug, shown as one
        raise UserError(f"{path} is not a readable TIFF ({exc}); the file may be damaged") from None
    problem = compression_problem(compression)
    if problem:
        raise UserError(f"{path}: {problem}")
    lead, shape, axes = _squeeze_lead(path, shape, axes)
    height, width, channels, layout = _classify_array(path, shape, axes)
    palette = ""
    if photometric == PHOTOMETRIC_PALETTE and channels == 1:
        palette, channels = "tiff", 3
        dtype = "uint8"  # narrowed to the colour map's depth below if it needs 16 bits
        if _colormap_is_16bit(path, index):
            dtype = "uint16"
    alpha, rgb = tiff_semantics(photometric, extrasamples, channels)
    premultiplied = alpha and extrasamples[-1] == 1
    if palette:
        alpha, rgb = False, True
    _check_size(path, height, width, channels)
    if is_ome or lead:  # OME/stack views: tifffile does not orient them
        orientation = 1
    if orientation >= 5:
        height, width = width, height
    return ImageInfo(
        str(path),
        "tiff",
        height,
        width,
        channels,
        _check_dtype(path, dtype),
        layout,
        lead=lead,
        series=index,
        skipped=skipped,
        geo_tags=geo,
        alpha=alpha,
        premultiplied=premultiplied,
        rgb=rgb,
        orientation=orientation,
        palette=palette,
        meta=meta,
    )


def _from_the_file(exc: BaseException) -> bool:
    """Whether a probe error came from reading the file (tifffile's parsing or the read
    itself), not from our own code: only those are the file's fault."""
    if isinstance(exc, (OSError, struct.error)) or is_decode_error(exc):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if "tifffile" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


# tifffile's names of a slide's associated images: never upscaled, never copied (a label
# or macro photo can show patient data).
ASSOCIATED = ("label", "macro", "thumbnail", "overview")


def _series_size(series: Any) -> tuple[int, int]:
    """(width, height) of a tifffile series' level 0."""
    dims = dict(zip(series.axes, series.shape, strict=True))
    return dims.get("X", 0), dims.get("Y", 0)


def _is_mask(series: Any) -> bool:
    """A GDAL internal nodata mask (NewSubfileType bit 4), which tifffile lists as a
    series of its own."""
    return bool(int(series.keyframe.subfiletype) & 4)


def _size_text(series: Any) -> str:
    w, h = _series_size(series)
    return f"{w}x{h}"


def image_series(all_series: list[Any]) -> tuple[int, str]:
    """(index, skipped) of the series that is the image in a TIFF: the largest that is
    not a slide's label, macro or thumbnail (the first of equals). ``skipped`` says in
    words what is not read: its reduced levels (overviews, SubIFDs, slide levels) and
    every other series."""

    def area(i: int) -> int:
        w, h = _series_size(all_series[i])
        associated = (all_series[i].name or "").lower() in ASSOCIATED
        return -1 if associated or _is_mask(all_series[i]) else w * h

    index = max(range(len(all_series)), key=lambda i: (area(i), -i))
    parts = []
    levels = all_series[index].levels[1:]
    if levels:
        sizes = ", ".join(_size_text(lv) for lv in levels)
        parts.append(f"{len(levels)} reduced level(s) ({sizes})")
    for i, other in enumerate(all_series):
        if i != index and _is_mask(other):
            parts.append(f"internal mask {_size_text(other)} (not applied)")
        elif i != index:
            name = other.name or f"series {i}"
            parts.append(f"{name} {_size_text(other)}")
    return index, "; ".join(parts)


def tiff_colormap(path: str | Path, series: int = 0) -> np.ndarray:
    """The colour map of series ``series``' first page as (entries, 3) uint16."""
    import tifffile

    with open_input(as_path(str(path))) as fh, tifffile.TiffFile(fh) as tif:
        page = tif.series[series].keyframe
        return np.ascontiguousarray(np.asarray(page.colormap, np.uint16).T)


def _colormap_is_16bit(path: Path, series: int = 0) -> bool:
    """Whether the colour map holds more than 8-bit values (GDAL writes 8-bit ones * 257)."""
    cmap = tiff_colormap(path, series)
    return bool((cmap % 257).any())


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
    geo = geo_from_zarr(dict(node.attrs))  # GeoZarr / GDAL attributes, our own GeoKeys
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
        geo_tags=geo,
        rgb=channels == 3,  # a Zarr array cannot say; three channels are taken as RGB
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
