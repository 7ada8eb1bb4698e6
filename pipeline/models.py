"""What the driver knows about each model without importing it (no torch here).

A spec gives a model's preferred tiling and its constraints; ``factory`` names the
class in ``workers/`` that a Ray actor imports and builds. Add a model by adding a
spec here and an Upscaler class there.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str  # "module:Class" under workers/
    default_tile_px: int  # LR pixels
    default_overlap_px: int  # LR pixels
    size_multiple: int  # LR tiles are padded (reflect) to a multiple of this
    context_px: int  # LR pixels at a tile edge that differ from a whole-image run
    scales: tuple[int, ...] | None = None  # None: any integer scale
    # Conditioned on per-frame degradation scores (the estimate stage runs first).
    needs_degradation: bool = False
    needs_weights: bool = False  # checked where the workers run, before any work
    # Works in any sample range (linear): takes signed/float samples without a
    # model.value_range. Others expect a display range mapped to [0, 1].
    any_range: bool = False
    description: str = ""

    @property
    def min_overlap_px(self) -> int:
        # A pixel inside one tile's context margin must lie past the other tile's
        # margin *and* its weight ramp (tiling.window_1d), hence three margins.
        return 3 * self.context_px


MODELS: dict[str, ModelSpec] = {
    "bicubic": ModelSpec(
        name="bicubic",
        factory="workers.upscaler:BicubicUpscaler",
        default_tile_px=512,
        default_overlap_px=16,
        size_multiple=1,
        # torch's bicubic reads 2 pixels either side; 1.5 px at a tile edge differ.
        context_px=2,
        any_range=True,
        description="torch bicubic (align_corners=False), clamped; no weights needed",
    ),
    "s3diff": ModelSpec(
        name="s3diff",
        factory="workers.s3diff.upscaler:S3DiffUpscaler",
        default_tile_px=128,
        default_overlap_px=32,
        # The model pads to 64 output px itself and crops, so any tile size works and a
        # small image gets exactly the whole-image result.
        size_multiple=1,
        context_px=8,
        needs_degradation=True,
        needs_weights=True,
        description=(
            "S3Diff one-step diffusion SR (SD-Turbo + degradation-guided LoRA); "
            "needs model.weights (sd-turbo/, s3diff.pkl, de_net.pth)"
        ),
    ),
}


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]
