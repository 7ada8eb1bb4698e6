"""The Upscaler interface, the registry that builds one inside an actor, and ``bicubic``.

An upscaler maps a batch of LR tiles, float32 NCHW RGB in [0, 1], to SR tiles of
``scale`` times the size, float32 in [0, 1]. Conditioning that must be the same for
every tile of a frame (S3Diff's degradation scores) is passed in, never estimated per
tile.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.models import get_spec


class Upscaler(Protocol):
    scale: int
    device: torch.device

    def upscale(
        self, tiles_nchw: torch.Tensor, conditioning: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, 3, h, w) float32 [0, 1] -> (N, 3, h*scale, w*scale) float32 [0, 1]
        (a model that works in any range, ``ModelSpec.any_range``, takes any floats)."""
        ...


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def bicubic_upscale(tiles_nchw: torch.Tensor, scale: int, clamp: bool = True) -> torch.Tensor:
    """Plain bicubic, the reference for the seam-free invariant and for alpha channels;
    ``clamp=False`` keeps values outside [0, 1] (float samples in their own range)."""
    out = F.interpolate(tiles_nchw, scale_factor=scale, mode="bicubic", align_corners=False)
    return out.clamp_(0.0, 1.0) if clamp else out


class BicubicUpscaler:
    """Bicubic is linear, so it runs in any sample range: it does not clamp (the region
    worker clips to the data's range where there is one, after blending)."""

    def __init__(self, config: ModelConfig) -> None:
        self.scale = config.scale
        self.device = pick_device(config.device)

    def upscale(
        self, tiles_nchw: torch.Tensor, conditioning: torch.Tensor | None = None
    ) -> torch.Tensor:
        return bicubic_upscale(tiles_nchw.to(self.device), self.scale, clamp=False)


def build_upscaler(config: ModelConfig) -> Upscaler:
    """Import and construct the model named in the config (called once per actor)."""
    module_name, class_name = get_spec(config.name).factory.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)
