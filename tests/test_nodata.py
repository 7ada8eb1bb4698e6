"""Pixels with no data (GDAL_NODATA, NaN in float rasters) stay no data and never leak
into their neighbours (pipeline/image/nodata.py): an elevation model's -9999 interpolated as a
height would give cliffs. Inputs are GeoTIFFs written by tifffile; outputs are read with
rasterio, as a GIS user would, including the COG's overviews."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
import zarr

from pipeline.image.nodata import fill_invalid, invalid_mask, parse_nodata
from pipeline.image.publish import downsample2
from pipeline.job.launch import run_job
from tests.helpers import make_config

UTM_KEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)
H, W = 56, 72
HOLE = (slice(10, 22), slice(14, 30))  # nodata block, across tile borders (tile 32)
NAN_HOLE = (slice(36, 41), slice(50, 57))


def _dem(dtype: str) -> tuple[np.ndarray, float]:
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    height = 40 + 30 * np.sin(x / 9.0) * np.cos(y / 11.0)  # 10..70
    if dtype == "int16":
        dem, nodata = np.round(height * 10).astype(np.int16), -32768.0
    else:
        dem, nodata = height.astype(np.float32), -9999.0
        dem[NAN_HOLE] = np.nan
    dem[HOLE] = nodata
    return dem, nodata


def _write(path: Path, dem: np.ndarray, nodata: float) -> None:
    tifffile.imwrite(
        path,
        dem,
        extratags=[
            (33550, "d", 3, (30.0, 30.0, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
            (34735, "H", len(UTM_KEYS), UTM_KEYS, True),
            (42113, "s", 0, f"{nodata:g}", True),
        ],
    )


def _cfg(region_out_px: int):
    return make_config(
        scale=2,
        tile=32,
        overlap=8,
        region_out_px=region_out_px,
        chunk_out_px=32,
        run__runner="local",
        output__pyramid_min_px=64,
    )


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_nodata_stays_nodata_and_does_not_leak(tmp_path, dtype):
    rasterio = pytest.importorskip("rasterio")
    dem, nodata = _dem(dtype)
    src = tmp_path / "dem.tif"
    _write(src, dem, nodata)
    outs = []
    for region in (64, 128):  # two region partitions: the same pixels
        out = tmp_path / f"dem_x2_{region}.tif"
        run_job(str(src), str(out), _cfg(region), progress=False)
        outs.append(out)
    with rasterio.open(outs[0]) as a, rasterio.open(outs[1]) as b:
        assert a.nodata == nodata and a.dtypes[0] == dtype
        got = a.read(1)
        assert np.array_equal(got, b.read(1), equal_nan=True)
        overview = a.read(1, out_shape=(H, W), resampling=rasterio.enums.Resampling.nearest)
        masks = a.read_masks(1)

    hole = np.zeros((H, W), bool)
    hole[HOLE] = True
    nan_hole = np.isnan(dem) if dem.dtype.kind == "f" else np.zeros_like(hole)
    big = lambda m: np.repeat(np.repeat(m, 2, 0), 2, 1)  # noqa: E731
    # Exactly the source's no-data pixels, at output scale, hold no data.
    assert np.array_equal(got == nodata, big(hole))
    assert np.array_equal(np.isnan(got) if got.dtype.kind == "f" else big(nan_hole), big(nan_hole))
    # GDAL's own mask: every nodata pixel, and nothing outside the holes.
    assert (masks == 0)[big(hole)].all() and not (masks == 0)[~big(hole | nan_hole)].any()
    # Everything else is a height: nothing pulled towards -9999 / -32768.
    valid = ~big(hole | nan_hole)
    lo, hi = (10, 70) if dtype == "float32" else (100, 700)
    span = hi - lo
    assert got[valid].min() >= lo - 0.1 * span and got[valid].max() <= hi + 0.1 * span
    # Away from the holes (more than bicubic's reach), plain bicubic of the source.
    ref_src = np.where(hole | nan_hole, 0, dem).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(ref_src)[None, None], scale_factor=2, mode="bicubic")
    ref = ref[0, 0].numpy()
    far = ~big(_dilate(hole | nan_hole, 3))
    tol = 1e-3 if dtype == "float32" else 0.51  # int16: rounded, after float32 arithmetic
    assert np.abs(got[far].astype(np.float64) - ref[far]).max() <= tol
    # The overviews average valid samples only (GDAL's rule): no -9999 blended in.
    ov = overview[overview != nodata]
    ov = ov[np.isfinite(ov)] if ov.dtype.kind == "f" else ov
    assert ov.min() >= lo - 0.1 * span
    # OME-Zarr: the same pixels, and the nodata value as the arrays' fill value.
    run_job(str(src), str(tmp_path / "dem.zarr"), _cfg(64), progress=False)
    level0 = zarr.open_array(str(tmp_path / "dem.zarr" / "0"), mode="r")
    assert level0.fill_value == nodata
    assert np.array_equal(level0[0], got, equal_nan=True)


@pytest.mark.unit
def test_parse_nodata():
    assert parse_nodata("-9999", "float32") == -9999.0
    assert parse_nodata("-9999\x00", "float32") == -9999.0
    assert parse_nodata("nan", "float32") is None  # NaN is no data anyway
    assert parse_nodata("-9999", "uint8") is None  # no uint8 sample can hold it
    assert parse_nodata("0", "uint8") == 0.0
    assert parse_nodata("1.5", "int16") is None
    assert parse_nodata("not-a-number", "float32") is None
    assert parse_nodata(None, "float32") is None


@pytest.mark.unit
def test_fill_and_masked_downsample():
    values = np.array([[1, 2, 3], [4, -1, 6], [7, 8, -1]], np.float32)
    bad = invalid_mask(values, -1.0)
    assert bad is not None and bad.sum() == 2
    filled = fill_invalid(values, bad)
    assert filled[1, 1] == pytest.approx((1 + 2 + 3 + 4 + 6 + 7 + 8) / 7)
    assert filled[2, 2] == pytest.approx((6 + 8) / 2)  # its valid neighbours only
    assert np.array_equal(filled[~bad], values[~bad])
    assert invalid_mask(np.ones((2, 2), np.float32), -1.0) is None
    assert fill_invalid(np.full((2, 2), -1, np.float32), np.ones((2, 2), bool)).max() == 0
    block = np.array([[-1, 8], [4, -1]], np.int16)[:, :, None]
    assert downsample2(block, 1, 1, -1.0)[0, 0, 0] == 6  # mean of 8 and 4
    assert downsample2(np.full((2, 2, 1), -1, np.int16), 1, 1, -1.0)[0, 0, 0] == -1
    nan = np.array([[np.nan, 2], [4, np.nan]], np.float32)[:, :, None]
    assert downsample2(nan, 1, 1)[0, 0, 0] == 3
