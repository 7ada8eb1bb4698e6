"""Publish: turn the store's ``output`` into the file the user asked for.

Formats by extension: ``.zarr`` (OME-Zarr 0.5 with a multiscale pyramid), ``.tif`` /
``.tiff`` (tiled BigTIFF with a pyramid in SubIFDs, GeoTIFF tags carried over and
rescaled), ``.png`` / ``.jpg`` (only when the image fits ``output.max_in_memory_mb``).
The pyramid is built level by level in Ray tasks that each own whole chunks. Output is
written under the temporary name ``pipeline.store.outputs`` gives it and put in place
only when complete (the single-file writers write a local file on their node and
upload it: ``outputs.local_target``).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import OutputConfig
from pipeline.errors import UserError
from pipeline.image.cog import write_cog
from pipeline.image.metadata import ImageMeta
from pipeline.image.nodata import GDAL_NODATA, invalid_mask, mean_valid_2x2, parse_nodata
from pipeline.image.scaled_meta import (
    engineering_wkt,
    geo_affine,
    geo_crs_kind,
    geo_epsg,
    geozarr_attrs,
    icc_attr,
    level_transforms,
    omero_block,
    tiff_ome_metadata,
    tiff_resolution,
    tiff_slide_description,
)
from pipeline.image.tasks import Block, ImageJob, WholeFile
from pipeline.image.tiles import encoded_tiles
from pipeline.store.jobstore import JobStore
from pipeline.store.outputs import local_target
from pipeline.store.urls import ObjectPath, zarr_kwargs

log = logging.getLogger(__name__)


def check_output(
    path: Path,
    fmt: str,
    out_hw: tuple[int, int],
    channels: int,
    dtype: str,
    cfg: OutputConfig,
    alpha: bool | None = None,
    rgb: bool = True,
    premultiplied: bool = False,
) -> None:
    """Refuse, before any work, an output the chosen format cannot hold. ``alpha``:
    whether the last channel is alpha (None: 2 and 4 channels are taken as with alpha);
    ``rgb``: whether three image channels are RGB (else independent bands)."""
    h, w = out_hw
    alpha = channels in (2, 4) if alpha is None else alpha
    if fmt in ("png", "jpeg"):
        image = channels - alpha
        if image > 3 or (image > 1 and not (rgb and image == 3)):
            raise UserError(
                f"{fmt.upper()} holds gray, RGB and their alpha only; these {channels} "
                "channels are independent bands: write .tif or .zarr, which keep them"
            )
        if premultiplied:
            raise UserError(
                f"{fmt.upper()} alpha is unassociated, and this image's colours are "
                "premultiplied by its alpha (TIFF associated alpha): write .tif, which keeps it"
            )
        if np.dtype(dtype).kind != "u":
            raise UserError(
                f"{fmt.upper()} holds unsigned samples only; write .tif or .zarr to keep "
                f"these {dtype} samples"
            )
    if fmt in ("png", "jpeg"):
        mb = h * w * channels * np.dtype(dtype).itemsize / 2**20
        if mb > cfg.max_in_memory_mb:
            raise UserError(
                f"a {w}x{h} output needs {mb:.0f} MiB in memory as {fmt.upper()}, over the "
                f"{cfg.max_in_memory_mb} MiB limit (output.max_in_memory_mb); write .zarr or "
                ".tif instead, which are streamed"
            )
    if fmt == "jpeg":
        if dtype != "uint8":
            raise UserError("JPEG holds 8-bit samples only; write .png or .tif to keep 16 bits")
        if channels in (2, 4):
            raise UserError("JPEG has no alpha channel; write .png or .tif to keep the alpha")
        if max(h, w) > 65500:
            raise UserError(f"JPEG is limited to 65500 px a side ({w}x{h}); write .tif or .zarr")


# ------------------------------------------------------------------------ pyramid
def pyramid_shapes(height: int, width: int, min_px: int) -> list[tuple[int, int]]:
    """(h, w) of every level, level 0 first; each level is half the previous (rounded up)."""
    shapes = [(height, width)]
    while max(shapes[-1]) > min_px:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def read_level(store: JobStore, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    arr = store.level(level)
    if level == 0:
        return np.asarray(arr[0, y0:y1, x0:x1, :])
    return np.asarray(arr[y0:y1, x0:x1, :])


def downsample2(
    block: np.ndarray, out_h: int, out_w: int, nodata: float | None = None
) -> np.ndarray:
    """2x2 mean of (h, w, C), replicating the last row/column of odd sizes. Samples with
    no data (``nodata``, NaN in float rasters) are left out of the mean; all four
    without data give no data (``pipeline.image.nodata``)."""
    need_h, need_w = out_h * 2, out_w * 2
    if block.shape[0] < need_h or block.shape[1] < need_w:
        block = np.pad(
            block,
            ((0, need_h - block.shape[0]), (0, need_w - block.shape[1]), (0, 0)),
            mode="edge",
        )
    f = block.astype(np.float32)
    invalid = invalid_mask(block, nodata)
    if invalid is not None:
        mean = mean_valid_2x2(f, invalid, nodata)
    else:
        mean = (f[0::2, 0::2] + f[1::2, 0::2] + f[0::2, 1::2] + f[1::2, 1::2]) * 0.25
    if block.dtype.kind == "f":
        return mean.astype(block.dtype)
    return np.rint(mean).astype(block.dtype)


def pyramid_block(task: Block, job: ImageJob) -> int:
    """Write block [y0:y1, x0:x1] of pyramid level ``level`` from level - 1."""
    level, y0, y1, x0, x1 = task.level, task.y0, task.y1, task.x0, task.x1
    store = JobStore.open(job.store_url)
    src = read_level(store, level - 1, 2 * y0, 2 * y1, 2 * x0, 2 * x1)
    nodata = store.layout.nodata
    store.level(level)[y0:y1, x0:x1, :] = downsample2(src, y1 - y0, x1 - x0, nodata)
    return (y1 - y0) * (x1 - x0)


def blocks(height: int, width: int, block: int) -> list[tuple[int, int, int, int]]:
    return [
        (y, min(y + block, height), x, min(x + block, width))
        for y in range(0, height, block)
        for x in range(0, width, block)
    ]


# ------------------------------------------------------------------------- writers
def ome_multiscales(
    name: str, shapes: list[tuple[int, int]], channels: int, meta: ImageMeta | None = None
) -> dict[str, Any]:
    """OME-Zarr 0.5 ``multiscales``: each level's real factor (``2**level``, whatever
    the rounding of odd sizes), in the input's physical units when it had them
    (``meta`` is already scaled to the output's level 0)."""
    meta = meta or ImageMeta()
    pixel = meta.pixel_size or (1.0, 1.0)
    unit = {"unit": meta.pixel_unit} if meta.pixel_size and meta.pixel_unit else {}
    datasets = [
        {"path": str(level), "coordinateTransformations": level_transforms(level, pixel)}
        for level in range(len(shapes))
    ]
    out: dict[str, Any] = {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", **unit},
                    {"name": "x", "type": "space", **unit},
                ],
                "datasets": datasets,
            }
        ],
    }
    return out


def create_ome_zarr(
    path: Path | ObjectPath,
    name: str,
    shapes: list[tuple[int, int]],
    channels: int,
    dtype: str,
    shard_px: int,
    chunk_px: int,
    meta: ImageMeta | None = None,
    geo: dict[int, Any] | None = None,
    scale: int = 1,
) -> None:
    """The empty OME-Zarr with all its metadata; ``copy_to_ome_task`` fills it.
    ``meta`` is the output's (scaled); ``geo`` the input's GeoTIFF tags, written per
    level as ``_CRS`` + GeoZarr ``proj:``/``spatial:`` attributes (publish.metadata)."""
    import zarr

    meta = meta or ImageMeta()
    geo = geo or {}
    if geo_affine(geo) is not None and geo_epsg(geo) is None and engineering_wkt(geo) is None:
        log.warning(
            "the input's CRS is %s with no EPSG code: %s gets the scaled transform and the "
            "GeoKeys (its 'geotiff' attribute) but no _CRS/proj: CRS; write .tif to keep "
            "the CRS where GDAL reads it",
            geo_crs_kind(geo) or "not given",
            path,
        )
    # The nodata value as the arrays' fill value, which GDAL's Zarr driver reports as
    # the band's nodata (pipeline/image/nodata.py keeps those pixels exact).
    nodata = parse_nodata((geo or {}).get(GDAL_NODATA), dtype)
    group = zarr.open_group(**zarr_kwargs(str(path)), mode="w")
    for level, (h, w) in enumerate(shapes):
        array = group.create_array(
            str(level),
            shape=(channels, h, w),
            dtype=dtype,
            shards=(channels, shard_px, shard_px),
            chunks=(1, chunk_px, chunk_px),
            dimension_names=("c", "y", "x"),
            fill_value=0 if nodata is None else nodata,
        )
        geo_attrs = geozarr_attrs(geo or {}, scale, level, (h, w))
        if geo_attrs:
            array.attrs.update(geo_attrs)
    attrs: dict[str, Any] = {"ome": ome_multiscales(name, shapes, channels, meta)}
    omero = omero_block(meta, channels, dtype)
    if omero:
        attrs["ome"]["omero"] = omero
    attrs.update(icc_attr(meta))
    group.attrs.update(attrs)


def copy_to_ome(task: Block, job: ImageJob) -> int:
    """Copy one shard-aligned block of a level into the staged OME-Zarr, as (C, y, x)."""
    import zarr

    target, level, y0, y1, x0, x1 = job.staged, task.level, task.y0, task.y1, task.x0, task.x1
    store = JobStore.open(job.store_url)
    block = read_level(store, level, y0, y1, x0, x1)
    array = zarr.open_array(**zarr_kwargs(f"{target}/{level}"), mode="r+")
    array[:, y0:y1, x0:x1] = np.moveaxis(block, -1, 0)
    return (y1 - y0) * (x1 - x0)


def _photometric(
    channels: int, alpha: bool = False, rgb: bool = True, premultiplied: bool = False
) -> tuple[str, list[str] | None]:
    """(photometric, extrasamples): RGB only for three colour channels, alpha only where
    the input had one (associated if it was); every other channel an "unspecified" extra
    sample (a band)."""
    colour = rgb and channels - alpha == 3
    first = 3 if colour else 1
    kind = "assocalpha" if premultiplied else "unassalpha"
    extras = ["unspecified"] * (channels - first - alpha) + ([kind] if alpha else [])
    return ("rgb" if colour else "minisblack"), (extras or None)


def scaled_geo_tags(geo: dict[int, Any], scale: int) -> list[tuple]:
    """GeoTIFF tags for the upscaled raster: same CRS, pixel size divided by ``scale``."""
    if not geo:
        return []
    keys = list(geo.get(34735, ()))
    point = False  # GTRasterTypeGeoKey (1025) == 2 means PixelIsPoint
    for i in range(4, len(keys) - 3, 4):
        if keys[i] == 1025 and keys[i + 1] == 0 and keys[i + 3] == 2:
            point = True
    shift = 0.5 / scale - 0.5  # LR pixel coordinate of output pixel 0's centre
    tags = []
    for code, value in geo.items():
        if code == 33550:  # ModelPixelScale
            sx, sy, sz = value
            tags.append((code, "d", 3, (sx / scale, sy / scale, sz), True))
        elif code == 33922:  # ModelTiepoint: (I, J, K, X, Y, Z) * n
            v = list(value)
            for i in range(0, len(v), 6):
                for j in (i, i + 1):  # LR raster (I, J) -> output raster coordinates
                    v[j] = scale * (v[j] + 0.5) - 0.5 if point else v[j] * scale
            tags.append((code, "d", len(v), tuple(v), True))
        elif code == 34264:  # ModelTransformation, 4x4 row-major
            m = np.asarray(value, dtype=np.float64).reshape(4, 4).copy()
            if point:
                m[:3, 3] += m[:3, 0] * shift + m[:3, 1] * shift
            m[:, :2] /= scale
            tags.append((code, "d", 16, tuple(m.ravel()), True))
        elif code == 34735:
            tags.append((code, "H", len(keys), tuple(keys), True))
        elif code == 34736:
            tags.append((code, "d", len(value), tuple(value), True))
        elif code in (34737, 42112, 42113):
            tags.append((code, "s", 0, str(value), True))
    return tags


def tiff_threads() -> int:
    """Threads for tile compression: every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _rational(value: float) -> tuple[int, int]:
    den = 10000
    return max(1, round(value * den)), den


def write_tiff_file(task: WholeFile, job: ImageJob, maxworkers: int = 0) -> int:
    """Stream every level into a tiled BigTIFF. With GeoTIFF tags the file is a
    Cloud-Optimized GeoTIFF (overviews as IFDs, COG order: publish.cog); otherwise
    level 0 with the others as SubIFDs (OME-TIFF when the input was OME).
    ``meta`` is the output's (scaled); tiles are compressed on ``maxworkers`` threads
    (0: every core)."""
    target, shapes, tile, geo, meta = job.staged, list(job.shapes), job.tile_px, job.geo, job.meta
    store = JobStore.open(job.store_url)
    lay = store.layout

    def rows(level: int, y0: int, y1: int) -> np.ndarray:
        return read_level(store, level, y0, y1, 0, shapes[level][1])

    with local_target(target) as local:
        samples = _photometric(lay.channels, lay.alpha, lay.rgb, lay.premultiplied)
        write_tiff(local, rows, shapes, tile, lay.channels, lay.dtype, geo, lay.scale,
                   meta or ImageMeta(), maxworkers or tiff_threads(), samples)  # fmt: skip
    return len(shapes)


def write_tiff(
    path: str,
    rows: Any,
    shapes: list[tuple[int, int]],
    tile: int,
    channels: int,
    dtype: str,
    geo: dict[int, Any],
    scale: int,
    meta: ImageMeta,
    maxworkers: int,
    samples: tuple[str, list[str] | None] | None = None,
) -> None:
    """The TIFF writer proper; rows(level, y0, y1) -> (rows, W, C) of that level.
    ``samples``: (photometric, extrasamples) (default: from the channel count)."""
    import tifffile

    geo_tags = scaled_geo_tags(geo, scale)
    icc = [(34675, "B", len(meta.icc_profile), meta.icc_profile, True)] if meta.icc_profile else []
    res = tiff_resolution(meta)
    if geo:
        extra = [(code, kind, value) for code, kind, _, value, _ in geo_tags + icc]
        if res:
            (xr, yr), unit = res["resolution"], res["resolutionunit"]
            extra += [(282, "r", _rational(xr)), (283, "r", _rational(yr)), (296, "H", unit)]
        with open(path, "wb") as fh:
            write_cog(fh, rows, shapes, tile, channels, dtype, extra, maxworkers,
                      samples or ("", None))  # fmt: skip
        return
    photometric, extrasamples = samples or _photometric(channels)
    gray = channels == 1  # a plain (H, W) page, no samples axis
    with (
        ThreadPoolExecutor(max(1, maxworkers)) as pool,
        tifffile.TiffWriter(path, bigtiff=True, ome=meta.ome) as tif,
    ):
        for level, (h, w) in enumerate(shapes):
            kwargs: dict[str, Any] = {}
            if level == 0:
                kwargs["subifds"] = len(shapes) - 1
                kwargs["extratags"] = geo_tags + icc
                kwargs["metadata"] = tiff_ome_metadata(meta, channels) if meta.ome else None
                kwargs["description"] = tiff_slide_description(meta, w, h)
            else:
                kwargs["subfiletype"] = 1
                kwargs["metadata"] = None
            if res:
                xr, yr = res["resolution"]
                kwargs["resolution"] = (xr / 2**level, yr / 2**level)
                kwargs["resolutionunit"] = res["resolutionunit"]
            tif.write(
                # finished deflate tiles: tifffile only places them
                encoded_tiles(rows, level, (h, w), tile, channels, dtype, pool),
                shape=(h, w) if gray else (h, w, channels),
                dtype=dtype,
                tile=(tile, tile),
                photometric=photometric,
                extrasamples=extrasamples,
                compression="zlib",
                planarconfig=None if gray else "contig",
                **kwargs,
            )


def write_png16(path: Path, image: np.ndarray, meta: ImageMeta | None = None) -> None:
    """Minimal PNG writer for 16-bit RGB(A)/gray+alpha, which Pillow cannot write;
    with iCCP (ICC profile) and pHYs (resolution) chunks from ``meta``."""
    meta = meta or ImageMeta()
    h, w, c = image.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = np.empty((h, 1 + w * c * 2), np.uint8)
    raw[:, 0] = 0  # filter type None
    raw[:, 1:] = image.astype(">u2").reshape(h, -1).view(np.uint8)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)))
        if meta.icc_profile:
            fh.write(chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(meta.icc_profile)))
        if meta.resolution:
            per_m = {"inch": 1 / 0.0254, "centimeter": 100.0}.get(meta.resolution_unit)
            x, y = meta.resolution
            phys = (round(x * per_m), round(y * per_m), 1) if per_m else (round(x), round(y), 0)
            fh.write(chunk(b"pHYs", struct.pack(">IIB", *phys)))
        fh.write(chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
        fh.write(chunk(b"IEND", b""))


def write_small_file(task: WholeFile, job: ImageJob) -> int:
    """PNG/JPEG: the whole image in memory (check_output bounded its size); the ICC
    profile and the scaled resolution of ``meta`` (the output's) go with it."""
    from PIL import Image

    target, fmt, jpeg_quality = job.staged, job.fmt, job.jpeg_quality
    meta = job.meta or ImageMeta()
    store = JobStore.open(job.store_url)
    image = np.asarray(store.array("output")[0])
    c = image.shape[-1]
    with local_target(target) as local:
        if image.dtype == np.uint16 and c > 1:
            write_png16(Path(local), image, meta)
            return image.size
        pil = Image.fromarray(image[:, :, 0] if c == 1 else image)
        options: dict[str, Any] = (
            {"quality": jpeg_quality} if fmt == "jpeg" else {"compress_level": 6}
        )
        if meta.icc_profile:
            options["icc_profile"] = meta.icc_profile
        if meta.resolution and meta.resolution_unit:
            per_inch = 2.54 if meta.resolution_unit == "centimeter" else 1.0
            options["dpi"] = tuple(v * per_inch for v in meta.resolution)
        pil.save(local, format="JPEG" if fmt == "jpeg" else "PNG", **options)
    return image.size
