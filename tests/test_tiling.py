"""Unit tests of the pure tiling geometry, blend windows and the blend."""

import numpy as np
import pytest

from pipeline.pure.tiling import (
    EDGE_FLOOR,
    accumulate,
    normalise,
    plan_grid,
    plan_regions,
    region_at,
    tile_starts,
    tile_window,
    tiles_for_region,
    window_1d,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "length,tile,overlap",
    [
        (1001, 128, 32),
        (677, 128, 32),
        (512, 512, 16),
        (513, 512, 16),
        (100, 512, 16),
        (129, 64, 8),
        (64, 64, 0),
        (1000, 100, 99),
    ],
)
def test_tile_starts_cover_axis_with_full_tiles(length, tile, overlap):
    starts, size = tile_starts(length, tile, overlap)
    assert size == min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert starts == sorted(set(starts))
    for a, b in zip(starts, starts[1:], strict=False):
        assert b - a <= tile - overlap  # stride never exceeds tile - overlap
        assert a + size - b >= overlap  # every neighbour pair overlaps by at least overlap
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + size] = True
    assert covered.all()


def test_tiles_for_region_are_exactly_the_intersecting_ones():
    grid = plan_grid(300, 500, 64, 16)
    for region in plan_regions(0, 300, 500, 100):
        got = set(tiles_for_region(grid, region))
        want = {
            (y, x)
            for y in grid.ys
            for x in grid.xs
            if y < region.y1 and y + 64 > region.y0 and x < region.x1 and x + 64 > region.x0
        }
        assert got == want and got


def test_regions_partition_the_frame():
    mask = np.zeros((301, 499), int)
    for r in plan_regions(0, 301, 499, 128):
        mask[r.y0 : r.y1, r.x0 : r.x1] += 1
    assert (mask == 1).all()


@pytest.mark.parametrize("kind", ["gaussian", "cosine"])
@pytest.mark.parametrize("taper", [(False, False), (True, False), (True, True)])
def test_windows_strictly_positive_and_symmetric_when_untapered(kind, taper):
    w = window_1d(256, 2, 16, kind, 2, *taper)
    assert w.dtype == np.float32 and (w > 0).all() and np.isfinite(w).all()
    if taper == (False, False) or taper == (True, True):
        np.testing.assert_allclose(w, w[::-1], rtol=1e-6)
    if taper[0]:
        assert w[:4].max() <= EDGE_FLOOR * w.max()  # context margin pushed to the floor


def test_region_at_is_the_planned_region():
    planned = plan_regions(3, 301, 499, 128)
    assert planned == [region_at(3, r.row, r.col, 301, 499, 128) for r in planned]
    assert region_at(3, 2, 3, 301, 499, 128) == planned[-1]
    assert (planned[-1].y0, planned[-1].y1, planned[-1].x0, planned[-1].x1) == (256, 301, 384, 499)


def _blend_frame(grid, tiles, scale, overlap, kind, region=None):
    """Blend ``tiles`` ({(y, x): (C, th, tw) float32}) over ``region`` (the whole frame if
    None) with the pure functions, as a worker does; returns (normalised, wsum)."""
    if region is None:
        region = region_at(0, 0, 0, grid.height, grid.width, max(grid.height, grid.width))
    oh, ow = (region.y1 - region.y0) * scale, (region.x1 - region.x0) * scale
    channels = next(iter(tiles.values())).shape[0]
    acc = np.zeros((channels, oh, ow), np.float32)
    wsum = np.zeros((oh, ow), np.float32)
    for y, x in tiles_for_region(grid, region):
        wt = tile_window(grid, y, x, scale, overlap, kind, 2)
        accumulate(
            acc,
            wsum,
            tiles[y, x],
            wt,
            (y * scale, x * scale),
            (region.y0 * scale, region.x0 * scale),
        )
    return normalise(acc, wsum), wsum


@pytest.mark.parametrize("kind", ["gaussian", "cosine"])
def test_normalised_weights_sum_to_one_and_blend_constant_exactly(kind):
    h, w, tile, overlap, scale = 203, 341, 64, 16, 2
    grid = plan_grid(h, w, tile, overlap)
    shape = (1, tile * scale, tile * scale)
    ones = {(y, x): np.ones(shape, np.float32) for y in grid.ys for x in grid.xs}
    total, wsum = _blend_frame(grid, ones, scale, overlap, kind)
    assert wsum.shape == (h * scale, w * scale) and (wsum > 0).all()
    assert total.dtype == np.float32
    np.testing.assert_array_equal(total, 1.0)  # sum(w_i) / sum(w_i), bit for bit
    const = {k: np.full(shape, 0.37, np.float32) for k in ones}
    blended, _ = _blend_frame(grid, const, scale, overlap, kind)
    np.testing.assert_allclose(blended, 0.37, atol=1e-6)


def test_accumulate_adds_only_the_part_of_a_tile_inside_the_region():
    # Region: output rows 10..13, cols 20..24. Tile: 3x3 at output (8, 23), so only its
    # last row and first two columns land, at region row 0, cols 3..4.
    acc = np.zeros((2, 4, 5), np.float32)
    wsum = np.zeros((4, 5), np.float32)
    tile = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    weights = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.float32) / 8
    accumulate(acc, wsum, tile, weights, (8, 23), (10, 20))
    want_w = np.zeros((4, 5), np.float32)
    want_w[0, 3:5] = [7 / 8, 1.0]
    want_acc = np.zeros((2, 4, 5), np.float32)
    want_acc[0, 0, 3:5] = [6 * 7 / 8, 7 * 1.0]
    want_acc[1, 0, 3:5] = [15 * 7 / 8, 16 * 1.0]
    np.testing.assert_array_equal(wsum, want_w)
    np.testing.assert_array_equal(acc, want_acc)
    assert acc.dtype == wsum.dtype == np.float32


@pytest.mark.parametrize("origin", [(0, 0), (0, 40), (30, 0), (14, 20), (10, 25), (3, 13)])
def test_accumulate_of_a_tile_missing_the_region_adds_nothing(origin):
    acc = np.zeros((3, 4, 5), np.float32)
    wsum = np.zeros((4, 5), np.float32)
    tile, weights = np.ones((3, 6, 7), np.float32), np.ones((6, 7), np.float32)
    accumulate(acc, wsum, tile, weights, origin, (10, 20))
    assert not acc.any() and not wsum.any()


def test_overlapping_tiles_sum_their_weights_and_normalise_to_the_weighted_mean():
    # Two 4x4 tiles overlapping in output columns 2..3 of a 4x6 region at the origin:
    # value 2 with weight 1, and value 5 with weight 3.
    acc = np.zeros((1, 4, 6), np.float32)
    wsum = np.zeros((4, 6), np.float32)
    for value, weight, x in ((2.0, 1.0, 0), (5.0, 3.0, 2)):
        tile = np.full((1, 4, 4), value, np.float32)
        accumulate(acc, wsum, tile, np.full((4, 4), weight, np.float32), (0, x), (0, 0))
    np.testing.assert_array_equal(wsum, np.repeat([[1, 1, 4, 4, 3, 3]], 4, axis=0))
    out = normalise(acc, wsum)
    assert out.shape == (1, 4, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], np.repeat([[2, 2, 17 / 4, 17 / 4, 5, 5]], 4, axis=0))


def test_accumulate_refuses_weights_of_another_size():
    acc, wsum = np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.float32)
    tile, weights = np.ones((1, 4, 4), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="differ in size"):
        accumulate(acc, wsum, tile, weights, (0, 0), (0, 0))


@pytest.mark.parametrize("kind", ["gaussian", "cosine"])
@pytest.mark.parametrize("region_lr_px", [37, 64, 100])
def test_regions_blended_from_their_tiles_equal_the_whole_frame_blend_cropped(kind, region_lr_px):
    h, w, tile, overlap, scale = 150, 211, 64, 16, 2
    grid = plan_grid(h, w, tile, overlap)
    rng = np.random.default_rng(0)
    tiles = {
        (y, x): rng.random((3, tile * scale, tile * scale), dtype=np.float32)
        for y in grid.ys
        for x in grid.xs
    }
    whole, _ = _blend_frame(grid, tiles, scale, overlap, kind)
    for region in plan_regions(0, h, w, region_lr_px):
        part, _ = _blend_frame(grid, tiles, scale, overlap, kind, region)
        crop = whole[
            :, region.y0 * scale : region.y1 * scale, region.x0 * scale : region.x1 * scale
        ]
        np.testing.assert_array_equal(part, crop)  # same tiles, same order: bit for bit


@pytest.mark.parametrize(
    "scale,region,chunk",
    [(2, 2048, 512), (3, 2048, 512), (4, 100, 64), (7, 1000, 100), (16, 64, 16)],
)
def test_shard_geometry_whole_lr_pixels_and_dividing_chunks(scale, region, chunk):
    from pipeline.pure.tiling import shard_geometry

    shard, ch = shard_geometry(scale, region, chunk)
    assert shard % scale == 0 and shard % ch == 0
    assert region - scale < shard <= region and ch <= chunk
