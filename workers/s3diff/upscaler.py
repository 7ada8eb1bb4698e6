"""The S3Diff Upscaler: what a region worker builds from ``model.name: s3diff``.

It loads the weights once per actor, resolves device and precision, and upscales
batches of LR tiles with the frame's degradation scores. The scores come from the
caller (estimated once per frame with :meth:`S3DiffUpscaler.estimate_degradation` on
crops from :func:`~workers.s3diff.degradation.plan_degradation_crops`), or from
``model.degradation`` when the user fixed them. Estimating them from the tiles being
upscaled is only a fallback: tiles of one frame would then disagree.
"""

from __future__ import annotations

import logging

import torch

from pipeline.config import ModelConfig, parse_degradation
from pipeline.errors import UserError
from workers.s3diff.model import S3Diff
from workers.upscaler import pick_device

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that has it (else fp16), fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in _DTYPES:
        raise UserError(f"model.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise UserError("model.precision fp16 needs a GPU; use fp32 (or bf16) on CPU")
    return _DTYPES[precision]


class S3DiffUpscaler:
    """LR tiles (N, 3, h, w) float32 in [0, 1] -> SR tiles (N, 3, h*s, w*s) float32 in [0, 1]."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.scale = config.scale
        self.device = pick_device(config.device)
        self.dtype = resolve_precision(config.precision, self.device)
        self.fixed_scores = (
            torch.tensor(parse_degradation(config.degradation), dtype=torch.float32)
            if config.degradation is not None
            else None
        )
        self.model = S3Diff.from_pretrained(config.weights, device=self.device, dtype=self.dtype)
        if self.device.type == "cuda":
            # One tile shape per job: let cuDNN pick the fastest convolution once.
            torch.backends.cudnn.benchmark = True
        if config.compile:
            self.model.enable_compile()
        self._warned_fallback = False

    @torch.inference_mode()
    def estimate_degradation(self, crops_nchw: torch.Tensor) -> torch.Tensor:
        """Mean DEResNet scores (2,) float32 on CPU over LR crops (N, 3, h, w) in [0, 1]."""
        if crops_nchw.ndim != 4 or crops_nchw.shape[1] != 3 or crops_nchw.shape[0] == 0:
            raise ValueError(f"expected LR crops (N, 3, h, w), got {tuple(crops_nchw.shape)}")
        step = max(1, self.config.batch_size * 4)
        scores = [self.model.estimate_degradation(chunk) for chunk in crops_nchw.split(step)]
        return torch.cat(scores).mean(dim=0).float().cpu()

    def _scores(self, tiles: torch.Tensor, conditioning: torch.Tensor | None) -> torch.Tensor:
        if self.fixed_scores is not None:
            return self.fixed_scores[None]
        if conditioning is None:
            if not self._warned_fallback:
                logger.warning(
                    "S3Diff got no degradation scores; estimating them from the tiles of "
                    "each call, so tiles of one frame may be conditioned differently"
                )
                self._warned_fallback = True
            return self.estimate_degradation(tiles)[None]
        scores = torch.as_tensor(conditioning, dtype=torch.float32).reshape(-1, 2)
        if scores.shape[0] not in (1, tiles.shape[0]):
            raise ValueError(
                f"conditioning must be (2,) or ({tiles.shape[0]}, 2) degradation scores, "
                f"got {tuple(torch.as_tensor(conditioning).shape)}"
            )
        if not bool(((scores >= 0) & (scores <= 1)).all()):
            raise ValueError(f"degradation scores must lie in [0, 1], got {scores.tolist()}")
        return scores

    @torch.inference_mode()
    def upscale(
        self, tiles_nchw: torch.Tensor, conditioning: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Upscale LR tiles with the frame's scores ``conditioning`` (2,) or per tile (N, 2).

        Returns float32 in [0, 1] on ``self.device``. Tiles run ``batch_size`` at a time;
        any tile size works (the model pads to 64 output px and crops).
        """
        if tiles_nchw.ndim != 4 or tiles_nchw.shape[1] != 3:
            raise ValueError(f"expected RGB tiles (N, 3, h, w), got {tuple(tiles_nchw.shape)}")
        scores = self._scores(tiles_nchw, conditioning)
        batch = self.config.batch_size
        out = []
        for b0 in range(0, tiles_nchw.shape[0], batch):
            tiles = tiles_nchw[b0 : b0 + batch]
            part = scores if scores.shape[0] == 1 else scores[b0 : b0 + batch]
            count = tiles.shape[0]
            if self.config.compile and count < batch:
                # A compiled model has static shapes: pad to a full batch rather than
                # compile again for the region's last, partial batch.
                tiles, part = pad_batch(tiles, batch), pad_batch(part, batch)
            sr = self.model(
                tiles,
                part,
                scale=self.scale,
                color_fix=self.config.color_fix,
                fold=self.config.fold_lora,
            )
            out.append(sr[:count])
        return torch.cat(out)


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Repeat the last row of ``x`` up to ``size`` rows. One score pair (1, 2) is left
    alone: it applies to the whole batch."""
    if x.shape[0] == size or (x.ndim == 2 and x.shape[0] == 1):
        return x
    return torch.cat([x, x[-1:].expand(size - x.shape[0], *x.shape[1:])])
