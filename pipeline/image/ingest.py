"""Ingest: copy an image into the job store's ``input`` array, in parallel Ray tasks.

TIFF and Zarr inputs are read lazily, one band of rows per task (never whole in
memory); the stored image is made upright here (EXIF/TIFF Orientation: a rotated file's
band is a band of its columns) and a TIFF colour map is expanded to RGB, so everything
after ingest sees what viewers show. PNG and JPEG must be decoded whole, so they are one
task (probe already checked the decoded size against the limit). These functions run
inside Ray tasks; the driver only plans the bands. An input on an object store is read
by the tasks themselves through fsspec (ranged reads), so it works on any node of a
cluster.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import DamagedInput, is_decode_error
from pipeline.image.probe import ImageInfo, tiff_colormap
from pipeline.image.tasks import Band, ImageJob
from pipeline.store.jobstore import JobStore
from pipeline.store.urls import open_input, open_zarr


def _to_hwc(block: np.ndarray, layout: str) -> np.ndarray:
    if layout == "hw":
        return block[:, :, None]
    if layout == "chw":
        return np.moveaxis(block, 0, -1)
    return block


def orient(image_hwc: np.ndarray, orientation: int) -> np.ndarray:
    """The upright view of a stored (h, w, C) array whose EXIF/TIFF Orientation is
    ``orientation`` (1: as stored; 2-4: flips; 5-8: transposed, so h and w swap)."""
    a = image_hwc
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.transpose(1, 0, 2)
    if orientation == 6:  # shown rotated 90 degrees clockwise
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:  # shown rotated 90 degrees counter-clockwise
        return np.rot90(a, 1)
    return a


def stored_band(
    orientation: int, stored_h: int, stored_w: int, y0: int, y1: int
) -> tuple[slice, slice]:
    """(rows, cols) of the stored image that hold upright rows [y0, y1): ``orient`` of
    that block is exactly those upright rows."""
    every = slice(None)
    if orientation in (1, 2):
        return slice(y0, y1), every
    if orientation in (3, 4):
        return slice(stored_h - y1, stored_h - y0), every
    if orientation in (5, 6):
        return every, slice(y0, y1)
    return every, slice(stored_w - y1, stored_w - y0)  # 7, 8


def open_lazy(info: ImageInfo):
    """A lazily indexed view of a TIFF or Zarr input (numpy-style slicing). For a TIFF it
    is level 0 of the series probe chose: a multi-resolution TIFF (COG, SubIFD pyramid,
    slide) is a group of levels in tifffile's Zarr view, and one level is the array."""
    import zarr

    if info.kind == "tiff":
        import tifffile

        # The file object stays open for as long as the view is used.
        store = tifffile.imread(open_input(info.path), aszarr=True, series=info.series, level=0)
        return zarr.open_array(store, mode="r")
    node = open_zarr(info.path, mode="r")
    return node[info.zarr_path] if info.zarr_path else node


def expand_palette(codes: np.ndarray, colormap: np.ndarray, dtype: str) -> np.ndarray:
    """(h, w, 1) class codes -> (h, w, 3) colours from an (entries, 3) uint16 TIFF colour
    map, as uint8 (8-bit maps, stored * 257) or uint16."""
    table = colormap // 257 if dtype == "uint8" else colormap
    return table.astype(dtype)[codes[:, :, 0]]


def read_rows(info: ImageInfo, y0: int, y1: int, view=None, colormap=None) -> np.ndarray:
    """Upright rows [y0, y1) of the input as (h, W, C) in the store's dtype."""
    view = open_lazy(info) if view is None else view
    lead = (0,) * info.lead
    rows, cols = stored_band(info.orientation, *info.stored_hw, y0, y1)
    if info.layout == "chw":
        block = view[lead + (slice(None), rows, cols)]
    else:
        block = view[lead + (rows, cols)]
    block = orient(_to_hwc(np.asarray(block), info.layout), info.orientation)
    if info.palette == "tiff":
        colormap = tiff_colormap(info.path, info.series) if colormap is None else colormap
        block = expand_palette(block, colormap, info.dtype)
    return np.ascontiguousarray(block)


def decode_pillow(info: ImageInfo) -> np.ndarray:
    """Whole PNG/JPEG as upright (H, W, C) uint8/uint16 with the channels probe reported
    (``probe.pillow_channels``)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # probe already bounded the decoded size
    with open_input(info.path) as fh, Image.open(fh) as im:
        mode = im.mode
        if mode in ("P", "PA"):
            im = im.convert("RGBA" if info.channels == 4 else "RGB")
        elif mode == "1":
            im = im.convert("L")
        elif mode == "L" and info.alpha:
            im = im.convert("LA")  # the tRNS gray value becomes alpha
        elif mode == "RGB" and info.alpha:
            im = im.convert("RGBA")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            im = im.convert("RGB")
        arr = np.asarray(im)
        transparent = im.info.get("transparency")
    if arr.dtype != np.uint8 and arr.dtype != np.uint16:
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if mode.startswith("I") and info.alpha:  # 16-bit gray with a tRNS value
        alpha = np.where(arr[:, :, :1] == transparent, 0, 65535).astype(np.uint16)
        arr = np.concatenate([arr, alpha], axis=-1)
    return np.ascontiguousarray(orient(arr, info.orientation))


def ingest_band(task: Band, job: ImageJob) -> int:
    """Copy rows [y0, y1) (whole input chunks) into ``input[0]``; returns rows copied."""
    info, y0, y1 = job.info, task.y0, task.y1
    store = JobStore.open(job.store_url)
    target = store.array("input")
    if info.kind in ("png", "jpeg"):
        try:
            image = decode_pillow(info)
        except Exception as exc:
            if not is_decode_error(exc, pillow=True):
                raise
            raise DamagedInput(str(exc)) from exc
        target[0] = image
        return info.height
    view = open_lazy(info)
    colormap = tiff_colormap(info.path, info.series) if info.palette == "tiff" else None
    step = target.chunks[1]
    for start in range(y0, y1, step):
        stop = min(start + step, y1)
        try:
            block = read_rows(info, start, stop, view, colormap)
        except Exception as exc:
            if not is_decode_error(exc):
                raise  # ours: a bug, reported as one
            raise DamagedInput(str(exc)) from exc
        target[0, start:stop] = block
    return y1 - y0


def plan_bands(info: ImageInfo, chunk_rows: int, target_bands: int) -> list[tuple[int, int]]:
    """Row bands aligned to the store's input chunks, so no two tasks share a chunk."""
    if info.kind in ("png", "jpeg"):
        return [(0, info.height)]
    chunks = -(-info.height // chunk_rows)
    per_band = max(1, -(-chunks // max(1, target_bands)))
    bands = []
    for c0 in range(0, chunks, per_band):
        bands.append((c0 * chunk_rows, min((c0 + per_band) * chunk_rows, info.height)))
    return bands
