"""Degradation estimation: the DEResNet that scores an LR image, and where to look.

S3Diff conditions its LoRA on two scores in (0, 1) that a small CNN (from MM-RealSR)
predicts from the *original* LR image, before upsampling. The scores must be the same
for every tile of a frame, so the pipeline estimates them once per frame from a few LR
crops (:func:`plan_degradation_crops`) and passes them to every tile.

The network has two independent branches, one per score (column 0 / column 1; the
official code only uses them positionally). Each branch: conv 3->64, six residual blocks
of 64 channels, a strided conv 64->128, two residual blocks of 128 channels, global
average pooling and an MLP 128->512->1 with a sigmoid. The module layout mirrors the
official ``de_net.pth`` state dict so it loads strictly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NUM_SCORES = 2


class ResidualBlock(nn.Module):
    """x + conv2(relu(conv1(x))), 3x3 convs with bias, no normalisation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


def _branch_body(width: int = 64, wide: int = 128) -> nn.Sequential:
    return nn.Sequential(
        *(ResidualBlock(width) for _ in range(6)),
        nn.Conv2d(width, wide, 3, stride=2, padding=1),
        *(ResidualBlock(wide) for _ in range(2)),
    )


class DEResNet(nn.Module):
    """LR image (B, 3, H, W) float in [0, 1] -> degradation scores (B, 2) in (0, 1)."""

    def __init__(self, in_channels: int = 3, num_scores: int = NUM_SCORES) -> None:
        super().__init__()
        self.conv_first = nn.ModuleList(
            nn.Conv2d(in_channels, 64, 3, padding=1) for _ in range(num_scores)
        )
        self.body = nn.ModuleList(_branch_body() for _ in range(num_scores))
        self.fc_degree = nn.ModuleList(
            nn.Sequential(
                nn.Linear(128, 512), nn.ReLU(inplace=True), nn.Linear(512, 1), nn.Sigmoid()
            )
            for _ in range(num_scores)
        )

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        scores = []
        for first, body, head in zip(self.conv_first, self.body, self.fc_degree, strict=True):
            features = body(first(lr)).mean(dim=(2, 3))
            scores.append(head(features))
        return torch.cat(scores, dim=1)


def _axis_starts(length: int, crop: int, count: int) -> list[int]:
    if length <= crop or count <= 1:
        return [max(0, (length - crop) // 2)]
    span = length - crop
    return [round(i * span / (count - 1)) for i in range(count)]


def plan_degradation_crops(
    height: int, width: int, crop: int = 128, max_crops: int = 16
) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of up to ``max_crops`` LR crops spread evenly over a frame.

    Each crop is ``min(crop, height)`` x ``min(crop, width)`` px; an image smaller than a
    crop gives one crop, the whole image. The grid follows the aspect ratio, includes the
    image edges, and places about one crop per ``crop`` px of an axis at most.
    Deterministic: the same frame size always gives the same crops.
    """
    if height < 1 or width < 1 or crop < 1 or max_crops < 1:
        raise ValueError(f"bad crop plan request: {height}x{width}, crop {crop}, max {max_crops}")
    # Crops that would overlap by more than half are not worth their cost.
    fit_y, fit_x = max(1, round(height / crop)), max(1, round(width / crop))
    rows = max(1, min(fit_y, round(math.sqrt(max_crops * height / width))))
    cols = max(1, min(fit_x, max_crops // rows))
    rows = max(1, min(fit_y, max_crops // cols))
    ys = _axis_starts(height, crop, rows)
    xs = _axis_starts(width, crop, cols)
    return [(y, x) for y in ys for x in xs]


def extract_crops(
    image_chw: torch.Tensor, corners: list[tuple[int, int]], crop: int = 128
) -> torch.Tensor:
    """Stack the crops planned by :func:`plan_degradation_crops`: (len(corners), C, h, w)."""
    ch, cw = min(crop, image_chw.shape[-2]), min(crop, image_chw.shape[-1])
    return torch.stack([image_chw[:, y : y + ch, x : x + cw] for y, x in corners])
