"""Unit tests of the pure tiling geometry and blend windows."""

import numpy as np
import pytest

from pipeline.tiling import (
    EDGE_FLOOR,
    plan_grid,
    plan_regions,
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


@pytest.mark.parametrize("kind", ["gaussian", "cosine"])
def test_normalised_weights_sum_to_one_and_blend_constant_exactly(kind):
    h, w, tile, overlap, scale = 203, 341, 64, 16, 2
    grid = plan_grid(h, w, tile, overlap)
    acc = np.zeros((h * scale, w * scale), np.float64)
    wsum = np.zeros_like(acc)
    parts = []
    for y in grid.ys:
        for x in grid.xs:
            wt = tile_window(grid, y, x, scale, overlap, kind, 2)
            sl = np.s_[y * scale : (y + tile) * scale, x * scale : (x + tile) * scale]
            parts.append((sl, wt))
            wsum[sl] += wt
            acc[sl] += wt * 0.37
    assert (wsum > 0).all()
    total = np.zeros_like(acc)
    for sl, wt in parts:
        total[sl] += wt / wsum[sl]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    np.testing.assert_allclose(acc / wsum, 0.37, atol=1e-6)


@pytest.mark.parametrize(
    "scale,region,chunk",
    [(2, 2048, 512), (3, 2048, 512), (4, 100, 64), (7, 1000, 100), (16, 64, 16)],
)
def test_shard_geometry_whole_lr_pixels_and_dividing_chunks(scale, region, chunk):
    from pipeline.tiling import shard_geometry

    shard, ch = shard_geometry(scale, region, chunk)
    assert shard % scale == 0 and shard % ch == 0
    assert region - scale < shard <= region and ch <= chunk
