"""Pure quality figures on arrays: optical flow, warping error, seam bands, PSNR/SSIM.

No file I/O here (``media.py`` reads, ``meters.py`` accumulates over frames). Frames are
float32 in [0, 1]: grey HxW or RGB HxWx3. OpenCV is imported inside the functions that
use it (the ``qc`` extra), so importing this module needs numpy only.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from pipeline.errors import UserError
from pipeline.pure.tiling import plan_grid


def cv2_module():
    """OpenCV, or a one-line error saying how to install it."""
    try:
        import cv2
    except ImportError as exc:
        raise UserError(
            "qc needs OpenCV: pip install opencv-python-headless (or the project's [qc] extra)"
        ) from exc
    return cv2


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16/float HxW(xC) -> float32 in [0, 1]."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return image.astype(np.float32)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 (or HxW) float32 [0, 1] -> HxW float32 luma (BT.601 weights)."""
    if rgb.ndim == 2:
        return rgb
    if rgb.shape[2] == 1:
        return rgb[..., 0]
    cv2 = cv2_module()
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The reference upscale: OpenCV cubic (a = -0.75, half-pixel centres), which matches
    the pipeline's torch bicubic (align_corners=False) to quantisation level. Integer
    input stays integer (saturated, rounded: like a quantised output); float is clamped."""
    cv2 = cv2_module()
    h, w = lr.shape[:2]
    up = cv2.resize(lr, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
    return up if up.dtype.kind in "ui" else np.clip(up, 0.0, 1.0)


class FramePair(NamedTuple):
    """What the meters need of one (source, output) frame pair, float32 in [0, 1]."""

    src: np.ndarray  # LR RGB
    src_grey: np.ndarray  # LR
    out_grey: np.ndarray  # output size
    ref_grey: np.ndarray  # the bicubic reference, output size
    out_down: np.ndarray  # output box-filtered to LR, RGB
    ref_down: np.ndarray  # the reference box-filtered to LR, RGB


def prepare(src: np.ndarray, out: np.ndarray, scale: int) -> FramePair:
    """``src`` (LR) and ``out`` HxWx3 uint8/uint16/float32 -> a ``FramePair``. The
    output-size work is done on the stored integers (OpenCV's fast paths); only grey
    planes are made float at output size."""
    cv2 = cv2_module()
    ref = bicubic_upscale(src, scale)
    size_hw = src.shape[:2]
    src_f = to_float(src)
    return FramePair(
        src=src_f,
        src_grey=to_grey(src_f),
        out_grey=to_float(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)),
        ref_grey=to_float(cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY)),
        out_down=to_float(area_downscale(out, size_hw)),
        ref_down=to_float(area_downscale(ref, size_hw)),
    )


def area_downscale(hr: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Box-filter ``hr`` to ``size_hw`` (the source size): the fidelity comparison."""
    cv2 = cv2_module()
    return cv2.resize(hr, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------- motion / flicker
class FlowEstimator:
    """DIS optical flow on low-resolution grey frames (OpenCV, preset MEDIUM).

    Sub-pixel accuracy is what matters: with preset FAST the bicubic reference's own
    warping error on a translating texture was 7x higher (0.0056 vs 0.0008), which hides
    real flicker (per-frame noise read 3.8 instead of 29). The flow runs at LR, so MEDIUM
    stays cheap next to the output-size work."""

    def __init__(self) -> None:
        cv2 = cv2_module()
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def __call__(self, a_grey: np.ndarray, b_grey: np.ndarray) -> np.ndarray:
        """Flow F (HxWx2 float32, px, (dx, dy)) with a(x) ~ b(x + F(x))."""
        a8 = np.clip(a_grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
        b8 = np.clip(b_grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return self._dis.calc(a8, b8, None)


@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel (HxW float32 each); cached, a video has one or two sizes."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


def _sample_at(field: np.ndarray, flow: np.ndarray, interpolation: int) -> np.ndarray:
    """``field`` read at x + flow(x) (bilinear or nearest); outside reads give 0."""
    cv2 = cv2_module()
    gx, gy = _pixel_grid(*flow.shape[:2])
    return cv2.remap(
        field, gx + flow[..., 0], gy + flow[..., 1], interpolation, borderMode=cv2.BORDER_CONSTANT
    )


def consistent_mask(back: np.ndarray, fwd: np.ndarray) -> np.ndarray:
    """Pixels of the current frame whose motion is trusted (HxW bool).

    ``back``: current -> previous flow; ``fwd``: previous -> current. A pixel is kept when
    going back and then forward returns near the start (the forward-backward check of
    Sundaram et al. 2010, as used by Lai et al. 2018) and it does not leave the frame.
    Occluded and disoccluded pixels fail the check.
    """
    cv2 = cv2_module()
    h, w = back.shape[:2]
    fwd_at = _sample_at(fwd, back, cv2.INTER_LINEAR)
    loop = back + fwd_at
    lhs = (loop**2).sum(axis=2)
    rhs = 0.01 * ((back**2).sum(axis=2) + (fwd_at**2).sum(axis=2)) + 0.5
    gx, gy = _pixel_grid(h, w)
    tx, ty = gx + back[..., 0], gy + back[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return (lhs <= rhs) & inside


def upscale_flow(flow: np.ndarray, mask: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """LR flow and mask -> output scale: the field multiplied by ``scale`` and resized
    (bilinear), the mask by nearest neighbour (HxW uint8, 1 = valid)."""
    cv2 = cv2_module()
    h, w = flow.shape[:2]
    size = (w * scale, h * scale)
    flow_hr = cv2.resize(flow * float(scale), size, interpolation=cv2.INTER_LINEAR)
    mask_hr = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    return flow_hr, mask_hr


def warp_maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel reads from (x + flow), as OpenCV remap's fixed-point maps: made
    once per frame pair, used for the output and the reference."""
    cv2 = cv2_module()
    gx, gy = _pixel_grid(*flow.shape[:2])
    return cv2.convertMaps(gx + flow[..., 0], gy + flow[..., 1], cv2.CV_16SC2)


def warp_error(
    prev: np.ndarray, cur: np.ndarray, maps: tuple[np.ndarray, np.ndarray], mask: np.ndarray
) -> float:
    """Mean |cur - warp(prev)| over ``mask`` (HxW uint8, nonzero = valid) on grey HxW
    float32 [0, 1]: the warping error of Lai et al. for one frame pair; NaN when no pixel
    is valid."""
    cv2 = cv2_module()
    if not cv2.countNonZero(mask):
        return float("nan")
    warped = cv2.remap(prev, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return float(cv2.mean(cv2.absdiff(cur, warped), mask=mask)[0])


# ------------------------------------------------------------------------------- seams
def band_spans(length_lr: int, tile_px: int, overlap_px: int, scale: int) -> list[tuple[int, int]]:
    """The tile-overlap bands along one axis, as [start, stop) in output pixels.

    Tiles follow ``pipeline.pure.tiling.tile_starts`` (the job's global grid, LR px); the band
    between tile i and i+1 is where they overlap, and where a blend seam would show.
    """
    grid = plan_grid(length_lr, 1, tile_px, overlap_px)
    starts, tile = list(grid.ys), grid.tile_h
    spans = []
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        spans.append((b * scale, (a + tile) * scale))
    return spans


def gradient_energy(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared differences across column gaps (Hx(W-1)) and row gaps ((H-1)xW) of a grey
    HxW float32 image; gap c lies between pixel c and c + 1."""
    dx = grey[:, 1:] - grey[:, :-1]
    dy = grey[1:] - grey[:-1]
    return dx * dx, dy * dy


def band_gaps(spans: list[tuple[int, int]], n_gaps: int) -> np.ndarray:
    """Boolean mask over gaps: the gaps inside each band and at its two edges."""
    inside = np.zeros(n_gaps, dtype=bool)
    for a, b in spans:
        inside[max(a - 1, 0) : min(b, n_gaps)] = True
    return inside


def band_ratio(profile: np.ndarray, inside: np.ndarray) -> float:
    """Mean energy per gap inside the bands / mean elsewhere (NaN without both)."""
    if not inside.any() or inside.all():
        return float("nan")
    rest = profile[~inside].mean()
    return float(profile[inside].mean() / rest) if rest > 0 else float("nan")


# ---------------------------------------------------------------------------- fidelity
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1] (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(a_grey: np.ndarray, b_grey: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03)
    of two grey float32 images in [0, 1]."""
    cv2 = cv2_module()

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    c1, c2 = 0.01**2, 0.03**2
    a, b = a_grey.astype(np.float32), b_grey.astype(np.float32)
    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a * mu_a
    sbb = blur(b * b) - mu_b * mu_b
    sab = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (saa + sbb + c2)
    return float((num / den).mean())
