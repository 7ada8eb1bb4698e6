"""Pixels with no data: GDAL's nodata value (TIFF tag 42113) and NaN in float rasters.

A nodata pixel is not a value and must not be interpolated as one: an elevation model's
-9999 blended into its neighbours gives cliffs that do not exist. So the region worker:

1. marks the invalid samples of its input (per channel: equal to the nodata value, or
   not finite in a float raster);
2. fills them, tile by tile, from their valid neighbours before the model sees them
   (``fill_invalid``: each invalid sample takes the mean of its valid 8-neighbours, in
   rings inwards), so the model runs on a smooth continuation and valid pixels near a
   hole keep their own values. A tile is a cell of the global grid, so its filling does
   not depend on the region it is part of;
3. gives every output sample whose source pixel (nearest: ``scale`` x ``scale`` output
   pixels per source pixel) held no data that source sample (the nodata value, NaN).

Pyramid levels average valid samples only (nodata where all four are invalid), as GDAL's
overviews do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

GDAL_NODATA = 42113  # TIFF tag: the nodata value as ASCII text
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def parse_nodata(text: Any, dtype: str) -> float | None:
    """The GDAL_NODATA tag's value for samples of ``dtype``; None when there is none, when
    it is NaN (NaN is always no data in a float raster) or when no sample of ``dtype``
    can hold it (it can then match nothing)."""
    if text is None:
        return None
    try:
        value = float(str(text).strip().strip("\x00"))
    except ValueError:
        return None
    if math.isnan(value):
        return None
    kind = np.dtype(dtype).kind
    if kind in "iu":
        info = np.iinfo(dtype)
        if value != int(value) or not info.min <= value <= info.max:
            return None
    return value


def invalid_mask(samples: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """Boolean mask of the samples that hold no data, or None when every sample holds data
    (the common case: nothing to do)."""
    bad = None
    if samples.dtype.kind == "f":
        bad = ~np.isfinite(samples)
    if nodata is not None:
        hit = samples == np.asarray(nodata, samples.dtype)
        bad = hit if bad is None else bad | hit
    if bad is None or not bad.any():
        return None
    return bad


def fill_invalid(values: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """``values`` (h, w) with its ``invalid`` samples filled from their valid neighbours,
    ring by ring (a hole's edge first); all 0 when nothing in it is valid."""
    out = np.where(invalid, 0.0, values).astype(np.float32)
    known = ~invalid
    if not known.any():
        out[:] = 0.0
        return out
    h, w = out.shape
    while not known.all():
        pv = np.pad(np.where(known, out, 0.0), 1)
        pk = np.pad(known.astype(np.float32), 1)
        total = np.zeros((h, w), np.float32)
        count = np.zeros((h, w), np.float32)
        for dy, dx in _NEIGHBOURS:
            total += pv[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            count += pk[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        ring = ~known & (count > 0)
        out[ring] = total[ring] / count[ring]
        known = known | ring
    return out


def fill_tiles(tiles_nchw: np.ndarray, invalid_nchw: np.ndarray) -> np.ndarray:
    """``fill_invalid`` over every tile and channel of an (n, c, h, w) batch."""
    out = tiles_nchw.astype(np.float32, copy=True)
    for n in range(out.shape[0]):
        for c in range(out.shape[1]):
            if invalid_nchw[n, c].any():
                out[n, c] = fill_invalid(out[n, c], invalid_nchw[n, c])
    return out


def mark_output(out_chw: np.ndarray, source_hwc: np.ndarray, invalid_hwc: np.ndarray, scale: int):
    """Give every sample of ``out_chw`` (c, h*scale, w*scale) whose source pixel held no
    data (``invalid_hwc``, (h, w, c)) that source sample: the nodata value, NaN, inf."""
    big = np.repeat(np.repeat(invalid_hwc, scale, axis=0), scale, axis=1)
    src = np.repeat(np.repeat(source_hwc, scale, axis=0), scale, axis=1)
    for c in range(out_chw.shape[0]):
        out_chw[c][big[:, :, c]] = src[:, :, c][big[:, :, c]]
    return out_chw


def mean_valid_2x2(f: np.ndarray, invalid: np.ndarray, nodata: float | None) -> np.ndarray:
    """2x2 mean of the valid samples of float32 ``f`` (2h, 2w, c); the nodata value (NaN
    without one) where all four are invalid."""
    v = np.where(invalid, 0.0, f).astype(np.float32)
    k = (~invalid).astype(np.float32)
    total = v[0::2, 0::2] + v[1::2, 0::2] + v[0::2, 1::2] + v[1::2, 1::2]
    count = k[0::2, 0::2] + k[1::2, 0::2] + k[0::2, 1::2] + k[1::2, 1::2]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    mean[count == 0] = np.nan if nodata is None else nodata
    return mean
