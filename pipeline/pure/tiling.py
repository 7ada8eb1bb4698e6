"""Pure geometry of tiling: the global tile grid, output regions, blend windows and the
blend itself (tiles' weighted pixels summed into a region, then normalised).

Everything is in LR (input) pixels unless a name says ``out``. The tile grid is global
per frame, so which tiles exist never depends on how the output is cut into regions:
that is what makes the result independent of region size and actor count. No I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Relative weight of a tile's pixels that lie within the model's context margin of a
# tile edge that is not an image edge. Small enough that an overlapping neighbour wins,
# but strictly positive so the normalisation never divides by zero.
EDGE_FLOOR = 1e-4
GAUSSIAN_VAR = 0.01  # as in the official S3Diff latent tiling


def tile_starts(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Starts of the tiles along one axis and the tile length used on that axis.

    Stride is ``tile - overlap``; the last tile is aligned to the far edge so every tile
    is full size. An axis shorter than the tile gets one tile of the axis' own length.
    """
    if length <= tile:
        return [0], length
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts, tile


@dataclass(frozen=True)
class Grid:
    """The global tile grid of one frame, in LR pixels."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def plan_grid(height: int, width: int, tile: int, overlap: int) -> Grid:
    ys, th = tile_starts(height, tile, overlap)
    xs, tw = tile_starts(width, tile, overlap)
    return Grid(height, width, th, tw, tuple(ys), tuple(xs))


@dataclass(frozen=True)
class Region:
    """A rectangle of one frame's output, aligned to output shards; LR coordinates."""

    frame: int
    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int


def shard_geometry(scale: int, region_out_target: int, chunk_out_target: int) -> tuple[int, int]:
    """(output shard side, output chunk side) near the targets: the shard is a whole number
    of LR pixels times the scale, and the chunk divides the shard exactly."""
    shard = max(1, region_out_target // scale) * scale
    n = -(-shard // chunk_out_target)
    while shard % n:
        n += 1
    return shard, shard // n


def region_counts(height: int, width: int, region_lr_px: int) -> tuple[int, int]:
    return math.ceil(height / region_lr_px), math.ceil(width / region_lr_px)


def region_at(frame: int, row: int, col: int, height: int, width: int, region_lr_px: int) -> Region:
    """The region at (row, col) of a frame of ``height`` x ``width`` LR pixels cut into
    squares of ``region_lr_px`` LR pixels; regions on the far edges are smaller. The one
    formula for region rectangles: the driver plans with it, the worker locates with it."""
    y0, x0 = row * region_lr_px, col * region_lr_px
    return Region(
        frame,
        row,
        col,
        y0,
        min(y0 + region_lr_px, height),
        x0,
        min(x0 + region_lr_px, width),
    )


def plan_regions(frame: int, height: int, width: int, region_lr_px: int) -> list[Region]:
    """Cut one frame into regions of ``region_lr_px`` LR pixels (edge regions smaller)."""
    rows, cols = region_counts(height, width, region_lr_px)
    return [
        region_at(frame, r, c, height, width, region_lr_px)
        for r in range(rows)
        for c in range(cols)
    ]


def _touching(starts: tuple[int, ...], size: int, lo: int, hi: int) -> list[int]:
    return [i for i, s in enumerate(starts) if s < hi and s + size > lo]


def tiles_for_region(grid: Grid, region: Region) -> list[tuple[int, int]]:
    """(y, x) starts of every global tile whose footprint intersects the region."""
    iy = _touching(grid.ys, grid.tile_h, region.y0, region.y1)
    ix = _touching(grid.xs, grid.tile_w, region.x0, region.x1)
    return [(grid.ys[i], grid.xs[j]) for i in iy for j in ix]


def halo_box(grid: Grid, region: Region) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1): the LR box holding every pixel of every tile that touches the
    region (``tiles_for_region``), what a worker reads to compute the region."""
    tiles = tiles_for_region(grid, region)
    y0, x0 = min(y for y, _ in tiles), min(x for _, x in tiles)
    y1, x1 = max(y for y, _ in tiles) + grid.tile_h, max(x for _, x in tiles) + grid.tile_w
    return y0, x0, y1, x1


def window_1d(
    n_out: int,
    scale: int,
    overlap: int,
    kind: str,
    context: int,
    taper_start: bool,
    taper_end: bool,
) -> np.ndarray:
    """Blend weights (n_out,) float32, strictly positive, for one axis of one tile.

    ``kind`` is the base window (gaussian or cosine feather over the overlap). On a side
    that is not an image edge (``taper_*``), the outer ``context`` LR pixels, where a
    model sees the tile border instead of real image content, are pushed down to
    EDGE_FLOOR and ramp back up over another ``context`` pixels.
    """
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) / n_out  # (0, 1)
    if kind == "gaussian":
        base = np.exp(-((pos - 0.5) ** 2) / (2 * GAUSSIAN_VAR))
    elif kind == "cosine":
        ramp_out = max(overlap * scale, 1)
        d = np.minimum(np.arange(n_out) + 0.5, n_out - np.arange(n_out) - 0.5)
        base = np.where(d < ramp_out, 0.5 - 0.5 * np.cos(np.pi * d / ramp_out), 1.0)
        base = np.maximum(base, 1e-3)
    else:
        raise ValueError(f"unknown window {kind!r}")
    margin = context * scale
    if margin > 0:
        idx = np.arange(n_out) + 0.5
        for flag, dist in ((taper_start, idx), (taper_end, n_out - idx)):
            if not flag:
                continue
            t = np.clip((dist - margin) / margin, 0.0, 1.0)
            base = base * (EDGE_FLOOR + (1 - EDGE_FLOOR) * (0.5 - 0.5 * np.cos(np.pi * t)))
    return base.astype(np.float32)


def tile_window(
    grid: Grid, y: int, x: int, scale: int, overlap: int, kind: str, context: int
) -> np.ndarray:
    """Separable (tile_h*scale, tile_w*scale) float32 weights for the tile at (y, x)."""
    wy = window_1d(
        grid.tile_h * scale,
        scale,
        overlap,
        kind,
        context,
        taper_start=y > 0,
        taper_end=y + grid.tile_h < grid.height,
    )
    wx = window_1d(
        grid.tile_w * scale,
        scale,
        overlap,
        kind,
        context,
        taper_start=x > 0,
        taper_end=x + grid.tile_w < grid.width,
    )
    return np.outer(wy, wx)


def overlap_slices(
    tile_origin_out: tuple[int, int],
    tile_hw: tuple[int, int],
    region_origin_out: tuple[int, int],
    region_hw: tuple[int, int],
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """(rows, cols) of a tile and (rows, cols) of a region that cover the same output
    pixels, or None when the tile misses the region. Origins are (y, x) top-left corners
    in the frame's OUTPUT pixels; shapes (h, w). The one place the blend's geometry is
    worked out: the numpy accumulator below and the region worker's torch one use it."""
    (ty0, tx0), (th, tw) = tile_origin_out, tile_hw
    (oy0, ox0), (oh, ow) = region_origin_out, region_hw
    iy0, iy1 = max(ty0, oy0), min(ty0 + th, oy0 + oh)
    ix0, ix1 = max(tx0, ox0), min(tx0 + tw, ox0 + ow)
    if iy1 <= iy0 or ix1 <= ix0:
        return None
    tile = (slice(iy0 - ty0, iy1 - ty0), slice(ix0 - tx0, ix1 - tx0))
    region = (slice(iy0 - oy0, iy1 - oy0), slice(ix0 - ox0, ix1 - ox0))
    return tile, region


def accumulate(
    acc_chw: np.ndarray,
    wsum_hw: np.ndarray,
    tile_chw: np.ndarray,
    weights_hw: np.ndarray,
    tile_origin_out: tuple[int, int],
    region_origin_out: tuple[int, int],
) -> None:
    """Add one tile's weighted pixels to a region's accumulators, in place.

    ``acc_chw`` (C, H, W) and ``wsum_hw`` (H, W) are float32 sums over the region's output
    pixels; ``tile_chw`` (C, h, w) float32 is the tile's output and ``weights_hw`` (h, w)
    float32 its blend window. Origins are (y, x) of the tile's and the region's top-left
    corner in the frame's OUTPUT pixels. Only the part of the tile inside the region is
    added; a tile that misses the region adds nothing.
    """
    if tile_chw.shape[1:] != weights_hw.shape:
        raise ValueError(f"tile {tile_chw.shape} and weights {weights_hw.shape} differ in size")
    hit = overlap_slices(tile_origin_out, weights_hw.shape, region_origin_out, wsum_hw.shape)
    if hit is None:
        return
    (ty, tx), (ry, rx) = hit
    wt = weights_hw[ty, tx]
    acc_chw[:, ry, rx] += tile_chw[:, ty, tx] * wt
    wsum_hw[ry, rx] += wt


def normalise(acc_chw: np.ndarray, wsum_hw: np.ndarray) -> np.ndarray:
    """The blended region, (C, H, W) float32 in the tiles' range: the weighted sum of the
    tiles over the sum of their weights at each output pixel. Every pixel must have been
    covered by a tile (windows are strictly positive, so then ``wsum_hw`` > 0)."""
    return acc_chw / wsum_hw


def pad_to_multiple(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple
