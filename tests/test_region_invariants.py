"""DESIGN.md's seam-free and region-partition invariants, and the blend's normalisation,
on the pure region compute (``workers.region.upscale_region``) with small arrays and
cheap deterministic models: no store, no Ray, no job.

The models are per-image torch functions. ``smooth`` is bicubic. ``nearest`` repeats
each pixel, so any tile gives exactly the crop of the whole frame's upscale and a correct
blend must give it back. ``offset`` adds a tile-dependent offset (half the tile's mean) to that, so
overlapping tiles disagree: a region that blended with the wrong windows, weights or
tile positions at its borders would differ from the same pixels computed in another
region (a seam).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.pure.tiling import (
    halo_box,
    overlap_slices,
    plan_grid,
    plan_regions,
    tile_window,
    tiles_for_region,
)
from pipeline.pure.value_range import sample_range
from workers.region import RegionSpec, Samples, Windows, blend_region, upscale_region

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]


def nearest(scale: int):
    def model(images: torch.Tensor) -> torch.Tensor:
        return images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)

    return model


def smooth(scale: int):
    """Bicubic: it reaches a few pixels around each one (so unfilled no-data would
    spread) and keeps a constant image constant."""

    def model(images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False)

    return model


def offset(scale: int):
    def model(images: torch.Tensor) -> torch.Tensor:
        return nearest(scale)(images) + 0.5 * images.mean(dim=(1, 2, 3), keepdim=True)

    return model


def _spec(image, scale, tile, overlap, *, window="gaussian", context=0, multiple=1,
          nodata=None, alpha=0, colour=True):  # fmt: skip
    h, w, c = image.shape
    samples = Samples(c, alpha, colour, image.dtype.name, *sample_range(image.dtype.name))
    grid = plan_grid(h, w, tile, overlap)
    return RegionSpec(grid, scale, samples, overlap, window, context, multiple, nodata)


def _upscale(image, spec, region_px, model, tiles_per_call=3):
    """The frame as regions of ``region_px`` LR pixels, each computed alone from its
    halo, pasted into one output."""
    h, w, c = image.shape
    s = spec.scale
    out = np.full((h * s, w * s, c), 123, image.dtype)
    covered = np.zeros((h * s, w * s), int)
    for region in plan_regions(0, h, w, region_px):
        y0, x0, y1, x1 = halo_box(spec.grid, region)
        got = upscale_region(
            image[y0:y1, x0:x1].copy(), spec, region, model, tiles_per_call=tiles_per_call
        ).out_hwc
        assert got.dtype == image.dtype
        assert got.shape == ((region.y1 - region.y0) * s, (region.x1 - region.x0) * s, c)
        out[region.y0 * s : region.y1 * s, region.x0 * s : region.x1 * s] = got
        covered[region.y0 * s : region.y1 * s, region.x0 * s : region.x1 * s] += 1
    assert (covered == 1).all()  # the regions tile the output exactly once
    return out


def _random(h, w, c, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.uniform(-50, 300, (h, w, c)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, (h, w, c)).astype(dtype)


def _nearest_np(image, scale):
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


# (h, w, scale, tile, overlap, window, context_px, size_multiple): odd sizes, a frame
# narrower than a tile on one axis, one smaller than a tile, a large overlap (stride 4),
# the model's context taper and reflect padding.
GEOMETRIES = [
    (37, 53, 2, 16, 6, "gaussian", 0, 1),
    (29, 11, 3, 12, 4, "cosine", 2, 8),
    (41, 45, 2, 20, 9, "gaussian", 3, 16),
    (13, 9, 4, 16, 6, "gaussian", 2, 8),
    (33, 27, 4, 16, 12, "cosine", 0, 1),
]


@pytest.mark.parametrize("h,w,scale,tile,overlap,window,context,multiple", GEOMETRIES)
def test_regions_pasted_equal_the_frame_as_one_region(
    h, w, scale, tile, overlap, window, context, multiple
):
    """Seam-free: a frame upscaled as several regions, each from its own halo, and
    pasted, is the frame upscaled as one region, sample for sample; with a per-pixel
    model both are the whole frame's upscale."""
    image = _random(h, w, 3, "uint8", seed=h)
    spec = _spec(image, scale, tile, overlap, window=window, context=context, multiple=multiple)
    whole = _upscale(image, spec, max(h, w), offset(scale))
    assert _upscale(image, spec, 8, offset(scale)).tobytes() == whole.tobytes()
    # The offsets make overlapping tiles disagree: the test can see a seam.
    assert not np.array_equal(whole, _nearest_np(image, scale))
    assert np.array_equal(_upscale(image, spec, 8, nearest(scale)), _nearest_np(image, scale))


def test_float_samples_pasted_equal_the_whole_frame_to_rounding():
    image = _random(23, 31, 2, "float32", seed=5)
    spec = _spec(image, 2, 10, 4, context=1, colour=False)
    got = _upscale(image, spec, 7, nearest(2))
    np.testing.assert_allclose(got, _nearest_np(image, 2), rtol=2e-6, atol=2e-5)
    whole = _upscale(image, spec, 64, offset(2))
    assert _upscale(image, spec, 7, offset(2)).tobytes() == whole.tobytes()


@pytest.mark.parametrize(
    "dtype,channels,alpha,colour", [("uint8", 4, 1, True), ("uint16", 5, 0, False)]
)
def test_two_region_partitions_give_the_same_output(dtype, channels, alpha, colour):
    """Partition invariance: region sizes that cut the tiles differently (and batch
    the model's calls differently) give identical samples; alpha by bicubic, gray bands
    one by one."""
    image = _random(43, 38, channels, dtype, seed=9)
    spec = _spec(image, 2, 14, 5, context=2, multiple=8, alpha=alpha, colour=colour)
    a = _upscale(image, spec, 9, offset(2), tiles_per_call=2)
    b = _upscale(image, spec, 16, offset(2), tiles_per_call=5)
    c = _upscale(image, spec, 13, offset(2), tiles_per_call=1)
    assert a.tobytes() == b.tobytes() == c.tobytes()


@pytest.mark.parametrize("h,w,scale,tile,overlap,window,context,multiple", GEOMETRIES)
def test_window_weights_over_every_output_pixel_sum_to_one(
    h, w, scale, tile, overlap, window, context, multiple
):
    """Every output pixel of every region is covered, with a positive sum of windows,
    and its tiles' normalised weights sum to one (the blend's sum, checked against the
    numpy windows summed in float64)."""
    image = _random(h, w, 1, "uint8")
    spec = _spec(image, scale, tile, overlap, window=window, context=context, multiple=multiple)
    windows = Windows(spec)
    for region in plan_regions(0, h, w, 10):
        y0, x0, y1, x1 = halo_box(spec.grid, region)
        blend = blend_region(image[y0:y1, x0:x1], spec, region, nearest(scale), windows=windows)
        oh, ow = (region.y1 - region.y0) * scale, (region.x1 - region.x0) * scale
        norm = np.zeros((oh, ow))
        for y, x in tiles_for_region(spec.grid, region):
            wt = tile_window(spec.grid, y, x, scale, overlap, window, context).astype(np.float64)
            origin = (region.y0 * scale, region.x0 * scale)
            hit = overlap_slices((y * scale, x * scale), wt.shape, origin, (oh, ow))
            if hit is not None:
                (ty, tx), (ry, rx) = hit
                norm[ry, rx] += wt[ty, tx] / blend.wsum.numpy()[ry, rx]
        assert (blend.wsum.numpy() > 0).all()
        np.testing.assert_allclose(norm, 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "dtype,nodata,value", [("uint8", None, 201), ("int16", -9999, 417), ("float32", None, 3.25)]
)
def test_constant_frame_stays_constant_and_no_data_stays_no_data(dtype, nodata, value):
    """The blend normalises: a constant frame through a model that keeps constants
    (bicubic) is that constant at every output pixel, edges and odd sizes included, with
    an alpha channel (bicubic too). No-data samples (the nodata value; NaN in floats),
    at the frame's corner and across region borders, are filled before the model (else
    they would spread) and come back as no data, each source pixel as its scale x scale
    block; the rest stays the constant."""
    h, w, scale = 31, 27, 3
    image = np.full((h, w, 4), value, dtype)
    image[..., 3] = np.iinfo(dtype).max if np.dtype(dtype).kind in "iu" else 1.0
    hole = np.zeros((h, w), bool)
    hole[0:3, 0:2] = True  # the corner
    hole[9:12, 8:19] = True  # across region borders (regions of 10 LR px)
    bad = nodata if nodata is not None else (np.nan if dtype == "float32" else None)
    if bad is not None:
        image[hole, :3] = bad
    spec = _spec(image, scale, 12, 5, context=2, multiple=8, nodata=nodata, alpha=1)
    out = _upscale(image, spec, 10, smooth(scale))
    assert out.tobytes() == _upscale(image, spec, 64, smooth(scale)).tobytes()  # partitions
    big = np.repeat(np.repeat(hole, scale, 0), scale, 1) if bad is not None else None
    rgb, alpha = out[..., :3].astype(np.float64), out[..., 3].astype(np.float64)
    keep = np.ones(rgb.shape[:2], bool) if big is None else ~big
    np.testing.assert_allclose(rgb[keep], value, rtol=1e-6)
    np.testing.assert_allclose(alpha, image[0, 0, 3].astype(np.float64), rtol=1e-6)
    if big is not None:
        if np.isnan(bad):
            assert np.isnan(rgb[big]).all()
        else:
            assert (rgb[big] == bad).all()
