"""Colour correction of S3Diff outputs: wavelet (default), AdaIN, or none.

A one-step diffusion model tends to shift global colour. The official inference script
corrects this against the bilinear-upsampled LR image, on 8-bit PIL images. We do the
same arithmetic on float tensors (no quantisation), which is what the golden tensors
``sr_wavelet_float`` / ``sr_adain_float`` hold.

All functions take float tensors (N, 3, H, W) in [0, 1] and are pure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("wavelet", "adain", "none")
WAVELET_LEVELS = 5
ADAIN_EPS = 1e-5


def _blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur ([1,2,1] x [1,2,1] / 16) with holes of ``dilation`` px, replicate edges."""
    channels = image.shape[1]
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=image.dtype, device=image.device)
    kernel = (taps[:, None] * taps[None, :] / 16.0).expand(channels, 1, 3, 3)
    padded = F.pad(image, (dilation, dilation, dilation, dilation), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=dilation)


def wavelet_split(
    image: torch.Tensor, levels: int = WAVELET_LEVELS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): ``low`` is the image after ``levels`` blurs with dilations 1, 2, 4, ...;
    ``high`` the sum of the detail removed at each level, so high + low == image."""
    high = torch.zeros_like(image)
    low = image
    for level in range(levels):
        blurred = _blur(low, 2**level)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(sr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Keep the detail of ``sr`` and take the low frequencies (colour) from ``reference``."""
    sr_high, _ = wavelet_split(sr)
    _, ref_low = wavelet_split(reference)
    return (sr_high + ref_low).clamp_(0.0, 1.0)


def _channel_mean_std(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = image.flatten(2)
    mean = flat.mean(dim=2)[..., None, None]
    std = (flat.var(dim=2) + ADAIN_EPS).sqrt()[..., None, None]  # unbiased variance
    return mean, std


def adain_color_fix(sr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Match each channel's mean and standard deviation to ``reference``'s."""
    sr_mean, sr_std = _channel_mean_std(sr)
    ref_mean, ref_std = _channel_mean_std(reference)
    return ((sr - sr_mean) / sr_std * ref_std + ref_mean).clamp_(0.0, 1.0)


def color_fix(sr: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Apply ``method`` (wavelet | adain | none); computed in float32 whatever the input."""
    if method not in COLOR_FIXES:
        raise ValueError(f"color fix must be one of {', '.join(COLOR_FIXES)}, got {method!r}")
    sr, reference = sr.float(), reference.float()
    if method == "wavelet":
        return wavelet_color_fix(sr, reference)
    if method == "adain":
        return adain_color_fix(sr, reference)
    return sr.clamp(0.0, 1.0)
