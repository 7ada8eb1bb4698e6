"""Pure region compute: an LR halo, the global tile grid and an upscale callable in, the
region's finished output samples out (``upscale_region``). No store, no Ray: the region
worker reads the halo and writes the result around it (workers/region_worker.py), and the
seam-free, partition-invariance and blend maths are tested on arrays alone
(tests/test_region.py, tests/test_region_invariants.py).

Everything the pipeline does to a region happens here: the no-data fill before the model
and the no-data marks after it (pipeline/image/nodata.py), the reflect padding to the
model's size multiple, gray bands as separate model images, alpha by bicubic, the blend
windows and their sum, normalisation and the conversion to the output's sample type.

Everything after the model runs in torch on the device the model's tiles come out on (the
GPU when there is one): the weighted tiles are accumulated there in float32, normalised,
converted to the output's sample type, and copied to the host once, finished. The blend
is the same float32 arithmetic, in the same order, as ``pipeline.pure.tiling.accumulate`` and
``pipeline.pure.value_range.from_unit``, so the samples are identical to the numpy reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.image.nodata import fill_tiles, invalid_mask, mark_output
from pipeline.pure.tiling import (
    Grid,
    Region,
    halo_box,
    overlap_slices,
    pad_to_multiple,
    tile_window,
    tiles_for_region,
)

# Sample types torch converts on the device; others are converted to float32 on the host.
_DEVICE_DTYPES = {"uint8", "int8", "int16", "int32", "float32", "float16"}
CPU = torch.device("cpu")

# The model: (M, 3, h, w) float32 model units -> (M, 3, >= h*scale, >= w*scale), or None
# when it ran out of memory (the same tiles are tried again, fewer per call).
Upscale = Callable[[torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True)
class Samples:
    """What the region's samples mean: channels (the last ``alpha`` of them alpha, by
    bicubic), whether the image channels are one RGB image (``colour``) or independent
    gray bands, their ``dtype``, and the model range (sample = low + span * unit;
    ``bounded``: unit clipped to [0, 1])."""

    channels: int
    alpha: int
    colour: bool
    dtype: str
    low: float
    span: float
    bounded: bool


@dataclass(frozen=True)
class RegionSpec:
    """What every region of a job shares: the global tile ``grid`` (LR pixels), the
    ``scale``, the samples, the blend window (``window`` kind over ``overlap_px``, tapered
    over the model's ``context_px`` at inner tile edges), the model's input
    ``size_multiple`` (tiles are reflect-padded up to it) and the no-data value (None:
    only non-finite float samples hold no data)."""

    grid: Grid
    scale: int
    samples: Samples
    overlap_px: int
    window: str = "gaussian"
    context_px: int = 0
    size_multiple: int = 1
    nodata: float | None = None


class Windows:
    """A job's blend windows on ``device``, made once: a tile's window depends only on
    which image edges it touches, and a region's sum of windows only on its place in the
    grid (the last one is kept: a video's frames share it, an image's regions mostly
    differ). Used by one thread at a time (the model's)."""

    def __init__(self, spec: RegionSpec, device: torch.device = CPU) -> None:
        self.spec, self.device = spec, device
        self._tiles: dict[tuple[int, int], torch.Tensor] = {}
        self._sum: tuple[tuple[int, int, int, int], torch.Tensor] | None = None

    def tile(self, y: int, x: int) -> torch.Tensor:
        """(tile_h*scale, tile_w*scale) float32 weights of the tile at LR (y, x)."""
        g = self.spec.grid
        key = ((y > 0) + 2 * (y + g.tile_h < g.height), (x > 0) + 2 * (x + g.tile_w < g.width))
        if key not in self._tiles:
            s = self.spec
            w = tile_window(g, y, x, s.scale, s.overlap_px, s.window, s.context_px)
            self._tiles[key] = torch.from_numpy(w).to(self.device)
        return self._tiles[key]

    def region_sum(self, region: Region) -> torch.Tensor:
        """The region's sum of tile windows (``region_weights``)."""
        key = (region.y0, region.x0, region.y1, region.x1)
        if self._sum is None or self._sum[0] != key:
            tiles = tiles_for_region(self.spec.grid, region)
            wsum = region_weights(region, tiles, self.spec.scale, self.tile, self.device)
            self._sum = (key, wsum)
        return self._sum[1]


@dataclass
class Blend:
    """A region's weighted sum of tiles, not yet normalised: ``acc`` (C, h, w) and its
    ``wsum`` (h, w), float32 on the model's device; the region, where its halo starts
    (LR y, x) and the halo's no-data mask (None: every sample holds data)."""

    acc: torch.Tensor
    wsum: torch.Tensor
    region: Region
    halo_origin: tuple[int, int]
    invalid_hwc: np.ndarray | None
    tiles: int
    model_s: float


@dataclass
class RegionResult:
    out_hwc: np.ndarray  # (h*scale, w*scale, C) in ``Samples.dtype``
    tiles: int
    model_s: float


def upscale_region(
    halo_hwc: np.ndarray,
    spec: RegionSpec,
    region: Region,
    upscale: Upscale,
    *,
    tiles_per_call: Callable[[], int] | int = 8,
    device: torch.device = CPU,
    windows: Windows | None = None,
) -> RegionResult:
    """One region of the output, finished: ``blend_region``, then ``finish_region``.

    ``halo_hwc`` (h, w, C), the input's sample type, is the frame's LR box
    ``halo_box(spec.grid, region)``: every pixel of every global tile touching ``region``.
    """
    blend = blend_region(
        halo_hwc, spec, region, upscale, tiles_per_call=tiles_per_call, device=device,
        windows=windows,
    )  # fmt: skip
    return RegionResult(finish_region(blend, halo_hwc, spec), blend.tiles, blend.model_s)


def blend_region(
    halo_hwc: np.ndarray,
    spec: RegionSpec,
    region: Region,
    upscale: Upscale,
    *,
    tiles_per_call: Callable[[], int] | int = 8,
    device: torch.device = CPU,
    windows: Windows | None = None,
    acc: torch.Tensor | None = None,
) -> Blend:
    """Every global tile touching ``region`` through the model, weighted and summed.

    Its no-data samples are filled from their neighbours first, tile by tile; each tile
    is reflect-padded to ``spec.size_multiple``, cut back after the model. ``upscale``
    gets at most ``tiles_per_call`` tiles' images per call (a callable is asked again
    after it returned None: the caller's out-of-memory back-off lowered it).
    ``windows`` caches the blend windows across calls (None: made here); ``acc``, a
    (C, h, w) float32 buffer to sum into (zeroed here; None: a new one).
    """
    grid, scale, samples = spec.grid, spec.scale, spec.samples
    tiles = tiles_for_region(grid, region)
    by0, bx0, by1, bx1 = halo_box(grid, region)
    if halo_hwc.shape[:2] != (by1 - by0, bx1 - bx0):
        raise ValueError(
            f"halo {halo_hwc.shape[:2]} is not the region's LR box {(by1 - by0, bx1 - bx0)}"
        )
    per_call = tiles_per_call if callable(tiles_per_call) else lambda: tiles_per_call
    windows = windows or Windows(spec, device)
    th, tw = grid.tile_h, grid.tile_w
    ph, pw = pad_to_multiple(th, spec.size_multiple), pad_to_multiple(tw, spec.size_multiple)
    invalid_hwc = invalid_mask(halo_hwc, spec.nodata)
    halo_t = _to_unit(halo_hwc, samples, device).permute(2, 0, 1)  # (C, H, W) on device
    invalid_t = None if invalid_hwc is None else torch.from_numpy(invalid_hwc).permute(2, 0, 1)

    oy0, ox0 = region.y0 * scale, region.x0 * scale
    oh, ow = (region.y1 - region.y0) * scale, (region.x1 - region.x0) * scale
    if acc is None:
        acc = torch.zeros((samples.channels, oh, ow), dtype=torch.float32, device=device)
    else:
        acc.zero_()
    n_image = samples.channels - samples.alpha
    per_tile = 1 if samples.colour else n_image
    model_s = 0.0
    b0 = 0
    while b0 < len(tiles):
        coords = tiles[b0 : b0 + max(1, per_call() // per_tile)]
        lr = torch.stack(
            [halo_t[:, y - by0 : y - by0 + th, x - bx0 : x - bx0 + tw] for y, x in coords]
        )
        if invalid_t is not None:  # filled from their neighbours, tile by tile
            holes = torch.stack(
                [invalid_t[:, y - by0 : y - by0 + th, x - bx0 : x - bx0 + tw] for y, x in coords]
            )
            filled = fill_tiles(lr.cpu().numpy(), holes.numpy())
            lr = torch.from_numpy(filled).to(device)
        images = model_inputs(lr[:, :n_image], samples.colour)
        if (ph, pw) != (th, tw):
            images = pad_reflect(images, ph, pw)
        t0 = time.perf_counter()
        sr = upscale(images.contiguous())
        model_s += time.perf_counter() - t0
        if sr is None:
            continue  # out of memory: the same tiles again, in a smaller batch
        b0 += len(coords)
        sr = sr[:, :, : th * scale, : tw * scale].to(device=device, dtype=torch.float32)
        sr = model_outputs(sr, len(coords), n_image, samples.colour)
        if samples.alpha:
            sr = torch.cat([sr, _bicubic(lr[:, -1:], scale)], dim=1)
        for (y, x), tile in zip(coords, sr, strict=True):
            weights = windows.tile(y, x)
            hit = overlap_slices((y * scale, x * scale), tuple(weights.shape), (oy0, ox0), (oh, ow))
            if hit is None:
                continue
            (ty, tx), (ry, rx) = hit
            acc[:, ry, rx] += tile[:, ty, tx] * weights[ty, tx]
    wsum = windows.region_sum(region)
    return Blend(acc, wsum, region, (by0, bx0), invalid_hwc, len(tiles), model_s)


def region_weights(
    region: Region,
    tiles: list[tuple[int, int]],
    scale: int,
    window: Callable[[int, int], torch.Tensor],
    device: torch.device = CPU,
) -> torch.Tensor:
    """The region's sum of tile windows, (h, w) float32: the same for every frame. Every
    output pixel of the region is covered by a tile whose window is > 0 there, so the
    blend's normalisation never divides by zero."""
    oy0, ox0 = region.y0 * scale, region.x0 * scale
    oh, ow = (region.y1 - region.y0) * scale, (region.x1 - region.x0) * scale
    wsum = torch.zeros((oh, ow), dtype=torch.float32, device=device)
    for y, x in tiles:
        weights = window(y, x)
        hit = overlap_slices((y * scale, x * scale), tuple(weights.shape), (oy0, ox0), (oh, ow))
        if hit is not None:
            (ty, tx), (ry, rx) = hit
            wsum[ry, rx] += weights[ty, tx]
    return wsum


def finish_region(blend: Blend, halo_hwc: np.ndarray, spec: RegionSpec) -> np.ndarray:
    """The blend normalised and converted to the output's samples on its device, then
    copied to the host once: (h, w, C) in ``samples.dtype``. ``blend.acc`` is used up
    (overwritten in place). No-data samples get their source sample back, pixel for
    pixel at output scale (pipeline/image/nodata.py)."""
    samples, region = spec.samples, blend.region
    unit = blend.acc
    unit /= blend.wsum  # the weighted sum over the sum of weights (windows are > 0)
    _, oh, ow = unit.shape
    out = torch.empty((oh, ow, samples.channels), dtype=_torch_dtype(np.dtype(samples.dtype)))
    out = out.pin_memory() if unit.is_cuda else out
    out.copy_(to_samples_unconverted(unit, samples).permute(1, 2, 0))
    out_hwc = out.numpy()
    if blend.invalid_hwc is not None:
        by0, bx0 = blend.halo_origin
        ry, rx = region.y0 - by0, region.x0 - bx0
        rows = slice(ry, ry + region.y1 - region.y0)
        cols = slice(rx, rx + region.x1 - region.x0)
        src, bad = halo_hwc[rows, cols], blend.invalid_hwc[rows, cols]
        mark_output(np.moveaxis(out_hwc, -1, 0), src, bad, spec.scale)
    return out_hwc


def _to_unit(samples_hwc: np.ndarray, samples: Samples, device: torch.device) -> torch.Tensor:
    """Stored samples -> float32 model units on ``device`` (``pipeline.pure.value_range.to_unit``,
    computed after the copy, so the smaller integer samples cross to the device)."""
    if samples_hwc.dtype.name in _DEVICE_DTYPES:
        t = torch.from_numpy(np.ascontiguousarray(samples_hwc)).to(device).to(torch.float32)
    else:
        t = torch.from_numpy(samples_hwc.astype(np.float32)).to(device)
    if (samples.low, samples.span) != (0.0, 1.0) or samples_hwc.dtype.kind != "f":
        # A one-element tensor, not a scalar: torch divides by a scalar as a multiplication
        # by its reciprocal, which rounds differently from numpy's division.
        span = torch.tensor([samples.span], dtype=torch.float32, device=device)
        t = (t - np.float32(samples.low)) / span
    if samples.bounded:  # samples outside model.value_range are its black or white
        t.clamp_(0.0, 1.0)
    return t


def to_samples_unconverted(unit: torch.Tensor, samples: Samples) -> torch.Tensor:
    """float32 model units -> the values of ``samples.dtype``, still float32 (rounded
    half to even and clipped for integers), in place: ``pipeline.pure.value_range.from_unit`` in
    torch, less the final cast (the caller casts while it copies)."""
    if samples.bounded:
        unit.clamp_(0.0, 1.0)
    if (samples.low, samples.span) != (0.0, 1.0):
        unit.mul_(np.float32(samples.span)).add_(np.float32(samples.low))
    dt = np.dtype(samples.dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        unit.round_().clamp_(float(info.min), float(info.max))
    return unit


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dt)).dtype


def model_inputs(image_nchw: torch.Tensor, colour: bool) -> torch.Tensor:
    """(N, C, h, w) image channels -> the model's (M, 3, h, w): the RGB tiles as they
    are (``colour``), else every channel of every tile as its own gray image (M = N*C)."""
    if colour:
        return image_nchw
    n, c, h, w = image_nchw.shape
    return image_nchw.reshape(n * c, 1, h, w).expand(-1, 3, -1, -1)


def model_outputs(sr_m3hw: torch.Tensor, tiles: int, channels: int, colour: bool) -> torch.Tensor:
    """The model's (M, 3, H, W) back to (tiles, channels, H, W): gray images are the
    mean of the model's three outputs."""
    if colour:
        return sr_m3hw
    _, _, h, w = sr_m3hw.shape
    return sr_m3hw.mean(dim=1).reshape(tiles, channels, h, w)


def pad_reflect(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad right/bottom to (height, width); replicate where reflect cannot reach."""
    dh, dw = height - x.shape[-2], width - x.shape[-1]
    mode = "reflect" if dh < x.shape[-2] and dw < x.shape[-1] else "replicate"
    return F.pad(x, (0, dw, 0, dh), mode=mode)


def _bicubic(tiles_nchw: torch.Tensor, scale: int) -> torch.Tensor:
    """Alpha: plain bicubic, clamped to [0, 1] (workers.upscaler.bicubic_upscale)."""
    out = F.interpolate(tiles_nchw, scale_factor=scale, mode="bicubic", align_corners=False)
    return out.clamp_(0.0, 1.0)
