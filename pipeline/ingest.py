"""Ingest: copy an image into the job store's ``input`` array, in parallel Ray tasks.

TIFF and Zarr inputs are read lazily, one band of rows per task (never whole in
memory); PNG and JPEG must be decoded whole, so they are one task (probe already
checked the decoded size against the limit). These functions run inside Ray tasks;
the driver only plans the bands. An input on an object store is read by the tasks
themselves through fsspec (ranged reads), so it works on any node of a cluster.
"""

from __future__ import annotations

import numpy as np

from pipeline.probe import ImageInfo
from pipeline.storage import open_input, open_zarr
from pipeline.store import JobStore


def _to_hwc(block: np.ndarray, layout: str) -> np.ndarray:
    if layout == "hw":
        return block[:, :, None]
    if layout == "chw":
        return np.moveaxis(block, 0, -1)
    return block


def open_lazy(info: ImageInfo):
    """A lazily indexed view of a TIFF or Zarr input (numpy-style slicing)."""
    import zarr

    if info.kind == "tiff":
        import tifffile

        # The file object stays open for as long as the view is used.
        return zarr.open(tifffile.imread(open_input(info.path), aszarr=True), mode="r")
    node = open_zarr(info.path, mode="r")
    return node[info.zarr_path] if info.zarr_path else node


def read_rows(info: ImageInfo, y0: int, y1: int, view=None) -> np.ndarray:
    """Rows [y0, y1) of the input as (h, W, C) in the input's dtype."""
    view = open_lazy(info) if view is None else view
    lead = (0,) * info.lead
    if info.layout == "chw":
        block = view[lead + (slice(None), slice(y0, y1))]
    else:
        block = view[lead + (slice(y0, y1),)]
    return np.ascontiguousarray(_to_hwc(np.asarray(block), info.layout))


def decode_pillow(info: ImageInfo) -> np.ndarray:
    """Whole PNG/JPEG as (H, W, C) uint8/uint16 with the channel count probe reported."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # probe already bounded the decoded size
    with open_input(info.path) as fh, Image.open(fh) as im:
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if info.channels == 4 else "RGB")
        elif mode == "PA":
            im = im.convert("RGBA")
        elif mode == "1":
            im = im.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            im = im.convert("RGB")
        arr = np.asarray(im)
    if arr.dtype != np.uint8 and arr.dtype != np.uint16:
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def ingest_rows_task(info: ImageInfo, store_url: str, y0: int, y1: int) -> int:
    """Copy rows [y0, y1) (whole input chunks) into ``input[0]``; returns rows copied."""
    store = JobStore.open(store_url)
    target = store.array("input")
    if info.kind in ("png", "jpeg"):
        target[0] = decode_pillow(info)
        return info.height
    view = open_lazy(info)
    step = target.chunks[1]
    for start in range(y0, y1, step):
        stop = min(start + step, y1)
        target[0, start:stop] = read_rows(info, start, stop, view)
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
