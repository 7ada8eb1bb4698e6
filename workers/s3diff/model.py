"""S3Diff: one-step diffusion super-resolution on SD-Turbo with degradation-guided LoRA.

Our own implementation of Zhang et al., "Degradation-Guided One-Step Image
Super-Resolution with Diffusion Priors" (arXiv:2409.17058), from the facts in
``S3DIFF_SPEC.md``, checked against the official implementation's outputs in
``tests/data/golden``. It sits inside the region worker: :class:`S3DiffUpscaler`
(``upscaler.py``) owns one :class:`S3Diff` and calls it on batches of LR tiles.

The flow for LR images (N, 3, h, w) in [0, 1] and degradation scores (2,) or (N, 2):

1. upsample x``scale`` bilinearly, map to [-1, 1], reflect-pad right/bottom to 64 px;
2. Fourier features of the scores -> per-block modulation matrices M (r x r) that
   steer every LoRA layer: ``y = base(x) + (alpha/r) * B(A(x) @ M)``;
3. encode with the LoRA'd VAE encoder (posterior *mean*) and scale;
4. one UNet pass at t=999, positive and negative prompt in one batch, CFG 1.07;
5. one DDPM step to the x0 prediction, decode, clamp, crop, colour-fix.

Deviations from the official code, on purpose:

- The VAE posterior mean is used instead of a sample, so the output is deterministic
  (the official ``latent_dist.sample()`` draws ``mean + std * noise`` on every call).
- The DDPM step's ``1e-10 * noise`` term is left out (below fp32 resolution of x0).
- Positive and negative prompts go through the UNet in one batched call.
- For one score pair per batch the modulated LoRA is folded into the base weights
  (``delta W = (alpha/r) B M^T A``), so a tile costs what plain SD-Turbo costs.

Modulation (Fourier features, MLPs, the M products) always runs in float32; the UNet
and VAE run in the precision they were placed in (bf16/fp16 on GPU, fp32 on CPU).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UserError
from workers.s3diff.checkpoint import (
    BLOCK_EMBED_DIM,
    DE_EMBED_DIM,
    DEFAULT_UNET_TARGETS,
    DEFAULT_VAE_TARGETS,
    NUM_FOURIER,
    NUM_UNET_BLOCKS,
    NUM_VAE_BLOCKS,
    UNET_ADAPTER,
    VAE_ADAPTER,
    load_de_net_state,
    load_s3diff_checkpoint,
)
from workers.s3diff.color import color_fix as apply_color_fix
from workers.s3diff.degradation import DEResNet
from workers.s3diff.locations import (
    S3DIFF_REPO,
    SD_TURBO_REPO,
    diffusers_variant,
    resolve_weights,
)
from workers.s3diff.prompts import load_prompt_embeds

logger = logging.getLogger(__name__)

GUIDANCE_SCALE = 1.07
TIMESTEP = 999
LORA_ALPHA = 8.0
PAD_MULTIPLE = 64  # output pixels: 8 latent pixels times the UNet's 3 downsamplings
TILE_WEIGHT_VAR = 0.01  # variance of the official latent-tile Gaussian (relative to T^2)

UNET_LORA_TARGETS = DEFAULT_UNET_TARGETS
VAE_LORA_TARGETS = DEFAULT_VAE_TARGETS


# --------------------------------------------------------------------------- block ids


def vae_block_id(name: str) -> int:
    """encoder.down_blocks.k -> k, encoder.mid_block -> 4, anything else -> 5."""
    match = re.match(r"encoder\.down_blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1))
    return 4 if name.startswith("encoder.mid_block.") else 5


def unet_block_id(name: str) -> int:
    """down_blocks.k -> k, mid_block -> 4, up_blocks.k -> 5 + k, anything else -> 9."""
    match = re.match(r"(down|up)_blocks\.(\d+)\.", name)
    if match:
        return int(match.group(2)) + (0 if match.group(1) == "down" else 5)
    return 4 if name.startswith("mid_block.") else 9


# --------------------------------------------------------------------------- modulation


class DegradationModulation(nn.Module):
    """Degradation scores (B, 2) -> LoRA modulation matrices for the VAE and the UNet.

    Each score s becomes [sin(2 pi s W), cos(2 pi s W)] with a fixed random W (64); the
    two are concatenated to 256 features. Per model, an MLP embeds them (256), another
    embeds the learned block-id table (n_blocks, 64), and a linear layer fuses every
    (degradation, block) pair to an r x r matrix, row-major.
    """

    def __init__(self, rank_vae: int, rank_unet: int) -> None:
        super().__init__()
        self.rank_vae, self.rank_unet = rank_vae, rank_unet
        self.register_buffer("W", torch.zeros(NUM_FOURIER))
        fused_in = DE_EMBED_DIM + BLOCK_EMBED_DIM
        for part, blocks, rank in (
            ("vae", NUM_VAE_BLOCKS, rank_vae),
            ("unet", NUM_UNET_BLOCKS, rank_unet),
        ):
            de_mlp = nn.Sequential(nn.Linear(DE_EMBED_DIM, DE_EMBED_DIM), nn.ReLU())
            setattr(self, f"{part}_de_mlp", de_mlp)
            block_mlp = nn.Sequential(nn.Linear(BLOCK_EMBED_DIM, BLOCK_EMBED_DIM), nn.ReLU())
            setattr(self, f"{part}_block_mlp", block_mlp)
            setattr(self, f"{part}_fuse_mlp", nn.Linear(fused_in, rank * rank))
            setattr(self, f"{part}_block_embeddings", nn.Embedding(blocks, BLOCK_EMBED_DIM))

    def fourier_features(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, 2) -> (B, 256): [sin(p0), cos(p0), sin(p1), cos(p1)], p_i = 2 pi s_i W."""
        phase = scores.float()[..., None] * self.W * 2 * math.pi
        return torch.cat([phase.sin(), phase.cos()], dim=-1).flatten(1)

    def _de_mod(self, fourier: torch.Tensor, part: str, trace: dict | None) -> torch.Tensor:
        de_embed = getattr(self, f"{part}_de_mlp")(fourier)
        table = getattr(self, f"{part}_block_embeddings").weight
        block_embed = getattr(self, f"{part}_block_mlp")(table)
        batch, blocks = de_embed.shape[0], block_embed.shape[0]
        fused_in = torch.cat(
            [
                de_embed[:, None].expand(batch, blocks, -1),
                block_embed[None].expand(batch, blocks, -1),
            ],
            dim=-1,
        )
        rank = self.rank_vae if part == "vae" else self.rank_unet
        de_mod = getattr(self, f"{part}_fuse_mlp")(fused_in).reshape(batch, blocks, rank, rank)
        if trace is not None:
            trace[f"{part}_de_embed"] = de_embed
            trace[f"{part}_block_embed"] = block_embed
            trace[f"{part}_de_mod"] = de_mod
        return de_mod

    def forward(
        self, scores: torch.Tensor, trace: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2) float scores -> (vae_de_mod (B, 6, rv, rv), unet_de_mod (B, 10, ru, ru))."""
        fourier = self.fourier_features(scores)
        if trace is not None:
            trace["fourier"] = fourier
        return self._de_mod(fourier, "vae", trace), self._de_mod(fourier, "unet", trace)


# --------------------------------------------------------------------------- modulated LoRA


def add_s3diff_adapters(
    unet: nn.Module,
    vae: nn.Module,
    rank_unet: int,
    rank_vae: int,
    unet_targets: list[str] | str = UNET_LORA_TARGETS,
    vae_targets: list[str] | str = VAE_LORA_TARGETS,
) -> None:
    """Wrap the targeted layers in peft LoRA layers, as the official model does."""
    from peft import LoraConfig

    for model, rank, targets, name in (
        (unet, rank_unet, unet_targets, UNET_ADAPTER),
        (vae, rank_vae, vae_targets, VAE_ADAPTER),
    ):
        config = LoraConfig(
            r=rank, lora_alpha=LORA_ALPHA, init_lora_weights="gaussian", target_modules=targets
        )
        model.add_adapter(config, adapter_name=name)


def _modulate(h: torch.Tensor, mod: torch.Tensor, conv: bool) -> torch.Tensor:
    """Apply M (B or 1, r, r) to the LoRA bottleneck h in float32.

    Linear layers: h (B, ..., r) @ M. Conv layers: the same along the channel axis,
    h[b, j] = sum_k h[b, k] M[b, k, j].
    """
    batch = h.shape[0]
    if mod.shape[0] not in (1, batch):
        raise RuntimeError(
            f"LoRA modulation has batch {mod.shape[0]} but the layer input has batch {batch}"
        )
    h32 = h.float()
    if conv:
        out = torch.matmul(mod.transpose(1, 2), h32.flatten(2)).view_as(h32)
    else:
        out = torch.matmul(h32.reshape(batch, -1, h.shape[-1]), mod).view_as(h32)
    return out.to(h.dtype)


@dataclass
class _LoRARef:
    name: str
    layer: nn.Module  # a peft LoraLayer
    block: int
    conv: bool


class ModulatedLoRA:
    """Makes a model's peft LoRA layers degradation-aware, and folds them when possible.

    A forward hook on each layer's ``lora_A`` multiplies its output by the M matrix of
    the layer's block, so peft's own ``base(x) + scaling * B(A(x))`` becomes S3Diff's
    ``base(x) + scaling * B(A(x) @ M)``. :meth:`fold` instead writes
    ``W0 + scaling * B M^T A`` into the base weights and switches the LoRA branch off.
    """

    def __init__(
        self, model: nn.Module, adapter: str, block_id: Callable[[str], int], num_blocks: int
    ) -> None:
        from peft.tuners.lora import LoraLayer

        self.adapter = adapter
        self.num_blocks = num_blocks
        self.layers: list[_LoRARef] = []
        self._mods: list[torch.Tensor | None] = [None] * num_blocks
        self._base: dict[str, torch.Tensor] = {}
        self.folded = False
        for name, layer in model.named_modules():
            if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A:
                continue
            base, lora_a, lora_b = layer.base_layer, layer.lora_A[adapter], layer.lora_B[adapter]
            conv = isinstance(base, nn.Conv2d)
            if conv and not (
                lora_a.stride == base.stride
                and lora_a.padding == base.padding
                and lora_a.dilation == base.dilation
                and base.groups == 1
                and lora_b.kernel_size == (1, 1)
            ):
                raise RuntimeError(f"unexpected peft conv LoRA layout at {name}")
            if not conv and not isinstance(base, nn.Linear):
                raise RuntimeError(f"unexpected LoRA base layer {type(base).__name__} at {name}")
            ref = _LoRARef(name, layer, block_id(name), conv)
            lora_a.register_forward_hook(functools.partial(self._hook, ref))
            self.layers.append(ref)

    def _hook(
        self, ref: _LoRARef, module: nn.Module, inputs: Any, output: torch.Tensor
    ) -> torch.Tensor:
        mod = self._mods[ref.block]
        if mod is None:
            raise RuntimeError("S3Diff LoRA layer called before its modulation was set")
        return _modulate(output, mod, ref.conv)

    def set_modulation(self, de_mod: torch.Tensor) -> None:
        """de_mod (B or 1, num_blocks, r, r) float32 for the next unfolded forward."""
        if self.folded:
            raise RuntimeError("unfold() before setting a per-sample modulation")
        self._mods = [de_mod[:, k] for k in range(self.num_blocks)]

    @torch.no_grad()
    def fold(self, de_mod: torch.Tensor) -> None:
        """Fold one modulation (num_blocks, r, r) into the base weights."""
        for ref in self.layers:
            layer = ref.layer
            weight = layer.base_layer.weight
            if ref.name not in self._base:
                self._base[ref.name] = weight.detach().clone()
            lora_a = layer.lora_A[self.adapter].weight.float()
            lora_b = layer.lora_B[self.adapter].weight.float()
            mod = de_mod[ref.block].to(device=weight.device, dtype=torch.float32)
            b_mt = lora_b.reshape(lora_b.shape[0], -1) @ mod.T  # (out, r)
            delta = (b_mt @ lora_a.reshape(lora_a.shape[0], -1)).view(weight.shape)
            scaling = layer.scaling[self.adapter]
            # torch.add, not add_: .float() of a float32 tensor is the saved tensor itself.
            weight.copy_(torch.add(self._base[ref.name].float(), delta, alpha=scaling))
            layer.enable_adapters(False)
        self.folded = True

    @torch.no_grad()
    def unfold(self) -> None:
        """Restore the base weights and switch the modulated LoRA branch back on."""
        if not self.folded:
            return
        for ref in self.layers:
            ref.layer.base_layer.weight.copy_(self._base[ref.name])
            ref.layer.enable_adapters(True)
            ref.layer.requires_grad_(False)
        self.folded = False

    def forget_base_weights(self) -> None:
        """Drop the saved base weights (after unfold), e.g. before a dtype/device change."""
        self.unfold()
        self._base.clear()


# --------------------------------------------------------------------------- geometry


def reflect_pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the right and bottom of (N, C, H, W) up to multiples of ``multiple``.

    Reflection is repeated when the pad exceeds the image (tiny inputs); a side of
    length 1 is replicated.
    """
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    while pad_h or pad_w:
        step_h, step_w = min(pad_h, x.shape[-2] - 1), min(pad_w, x.shape[-1] - 1)
        if step_h == 0 and step_w == 0:
            return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return x


def latent_tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Official latent tiling along one axis: stride tile - overlap, the fewest tiles that
    cover ``size``, the last one moved back to end at the edge."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    count = math.ceil((size - tile) / stride) + 1
    return [min(i * stride, size - tile) for i in range(count)]


def latent_tile_weights(tile: int) -> torch.Tensor:
    """(T, T) float64 Gaussian blend weights of the official latent tiling, [y, x].

    Midpoints differ per axis as in the official code: (T-1)/2 along x, T/2 along y.
    """

    def gaussian(midpoint: float) -> torch.Tensor:
        return torch.tensor(
            [
                math.exp(-(i - midpoint) * (i - midpoint) / (tile * tile) / (2 * TILE_WEIGHT_VAR))
                / math.sqrt(2 * math.pi * TILE_WEIGHT_VAR)
                for i in range(tile)
            ],
            dtype=torch.float64,
        )

    return torch.outer(gaussian(tile / 2), gaussian((tile - 1) / 2))


@dataclass(frozen=True)
class LatentTiling:
    """Official latent tiling (whole-image runs): tile and overlap in latent pixels."""

    tile: int = 96
    overlap: int = 32


# --------------------------------------------------------------------------- the model


def _load_diffusers(cls: Any, folder: Path, part: str) -> nn.Module:
    hint = f"download Hugging Face {SD_TURBO_REPO} into {folder.parent}"
    if not (folder / "config.json").is_file():
        # Checked here: for a path that is not a folder diffusers would try the Hub.
        raise UserError(f"{folder}/config.json is missing; {hint}")
    try:
        return cls.from_pretrained(
            str(folder),
            variant=diffusers_variant(folder),
            use_safetensors=True,
            torch_dtype=torch.float32,
            local_files_only=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"cannot load the SD-Turbo {part} from {folder} ({first[:160]}); {hint}"
        ) from None


def _load_fragment(model: nn.Module, state: dict, part: str, source: Path) -> None:
    """Load the checkpoint's LoRA (+ conv_in) tensors; every LoRA weight must be covered."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise UserError(
            f"{source} does not fit the SD-Turbo {part} in {source.parent}/sd-turbo "
            f"({detail[:200]}); use the s3diff.pkl made for stabilityai/sd-turbo"
        ) from None
    if result.unexpected_keys:
        raise UserError(
            f"{source} has {len(result.unexpected_keys)} {part} tensors that the SD-Turbo {part} "
            f"has no place for, e.g. {result.unexpected_keys[0]}; the checkpoint and sd-turbo/ "
            "do not belong together"
        )
    missing = [k for k in result.missing_keys if ".lora_" in k or k.startswith("conv_in.")]
    if missing:
        raise UserError(
            f"{source} lacks {len(missing)} {part} LoRA tensors, e.g. {missing[0]}; download "
            f"s3diff.pkl again from Hugging Face {S3DIFF_REPO}"
        )


class S3Diff(nn.Module):
    """The S3Diff model: SD-Turbo UNet and VAE with modulated LoRA, plus the DE network.

    Build it with :meth:`from_pretrained` (a weights directory) or from parts (tests,
    benchmarks), then :meth:`place` it on a device and precision. Call it with LR images
    and degradation scores; see :meth:`forward`.
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        modulation: DegradationModulation,
        de_net: DEResNet,
        prompt_embeds: torch.Tensor,
        alpha_bar: float | torch.Tensor,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.modulation = modulation
        self.de_net = de_net
        # (2, 77, D): row 0 the positive prompt, row 1 the negative one.
        self.register_buffer(
            "prompt_embeds", prompt_embeds.float().reshape(2, *prompt_embeds.shape[-2:])
        )
        self.register_buffer("alpha_bar", torch.as_tensor(alpha_bar, dtype=torch.float32))
        self.unet_lora = ModulatedLoRA(unet, UNET_ADAPTER, unet_block_id, NUM_UNET_BLOCKS)
        self.vae_lora = ModulatedLoRA(vae, VAE_ADAPTER, vae_block_id, NUM_VAE_BLOCKS)
        self.batch_cfg = True  # positive and negative prompt in one UNet call
        self.tile_batch = 8  # latent tiles per UNet call in the official latent tiling
        self.compiled = False
        self.dtype = torch.float32
        self.vae_dtype = torch.float32
        self._folded_scores: tuple[float, float] | None = None
        self.requires_grad_(False)
        self.eval()

    # ----------------------------------------------------------------- building

    @classmethod
    def from_pretrained(
        cls,
        weights_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> S3Diff:
        """Load from a weights directory (see ``locations.py`` for the layout and lookup)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        paths = resolve_weights(weights_dir)
        checkpoint = load_s3diff_checkpoint(paths.s3diff)
        de_state = load_de_net_state(paths.de_net)
        positive, negative = load_prompt_embeds(paths)
        scheduler_file = paths.scheduler / "scheduler_config.json"
        if not scheduler_file.is_file():
            raise UserError(
                f"{scheduler_file} is missing; download Hugging Face "
                f"{SD_TURBO_REPO} into {paths.sd_turbo}"
            )
        unet = _load_diffusers(UNet2DConditionModel, paths.unet, "unet")
        vae = _load_diffusers(AutoencoderKL, paths.vae, "vae")
        dim = unet.config.cross_attention_dim
        if positive.shape[-1] != dim:
            raise UserError(
                f"{paths.prompt_embeds} holds {positive.shape[-1]}-dim embeddings but the UNet "
                f"expects {dim}; delete the file to recompute it from sd-turbo/text_encoder"
            )
        add_s3diff_adapters(
            unet,
            vae,
            checkpoint.rank_unet,
            checkpoint.rank_vae,
            checkpoint.unet_lora_targets,
            checkpoint.vae_lora_targets,
        )
        _load_fragment(unet, checkpoint.unet, "unet", paths.s3diff)
        _load_fragment(vae, checkpoint.vae, "vae", paths.s3diff)
        modulation = DegradationModulation(checkpoint.rank_vae, checkpoint.rank_unet)
        modulation.load_state_dict(checkpoint.modulation, strict=True)
        de_net = DEResNet()
        de_net.load_state_dict(de_state, strict=True)
        scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(str(paths.scheduler)))
        alpha_bar = scheduler.alphas_cumprod[TIMESTEP].float()
        model = cls(unet, vae, modulation, de_net, torch.cat([positive, negative]), alpha_bar)
        return model.place(device, dtype)

    def place(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> S3Diff:
        """Move to ``device`` with the UNet/VAE in ``dtype``; modulation, DE net and the
        DDPM step stay float32. fp16 keeps the VAE in float32 when its config asks so."""
        device = torch.device(device)
        self.unet_lora.forget_base_weights()
        self.vae_lora.forget_base_weights()
        self._folded_scores = None
        self.dtype = dtype
        upcast = dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        self.vae_dtype = torch.float32 if upcast else dtype
        # nn.Module.to: diffusers' own .to() warns about fp32 modules these models lack.
        nn.Module.to(self.unet, device=device, dtype=dtype)
        nn.Module.to(self.vae, device=device, dtype=self.vae_dtype)
        self.modulation.to(device=device, dtype=torch.float32)
        self.de_net.to(device=device, dtype=torch.float32)
        self.prompt_embeds = self.prompt_embeds.to(device)
        self.alpha_bar = self.alpha_bar.to(device)
        if device.type == "cuda":
            nn.Module.to(self.unet, memory_format=torch.channels_last)
            nn.Module.to(self.vae, memory_format=torch.channels_last)
        self.requires_grad_(False)
        return self

    def enable_compile(self, **options: Any) -> None:
        """torch.compile the UNet and the VAE encoder/decoder in place (GPU; slow first calls).

        Shapes are static by default (``dynamic=False``): each new batch or tile shape
        compiles once, so callers should keep batches full (:class:`S3DiffUpscaler` pads).
        """
        options.setdefault("dynamic", False)
        for module in (self.unet, self.vae.encoder, self.vae.decoder):
            module.compile(**options)
        self.compiled = True

    @property
    def device(self) -> torch.device:
        return self.alpha_bar.device

    @property
    def vae_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    # ----------------------------------------------------------------- conditioning

    @torch.no_grad()
    def estimate_degradation(self, lr: torch.Tensor) -> torch.Tensor:
        """DEResNet scores (N, 2) float32 of LR images (N, 3, h, w) in [0, 1]."""
        return self.de_net(lr.to(device=self.device, dtype=torch.float32))

    def _prepare_lora(self, scores: torch.Tensor, fold: bool, trace: dict | None) -> Any:
        """Fold or set the modulation for ``scores`` (B, 2); returns the UNet matrices to
        use per sample (None when folded)."""
        uniform = bool((scores == scores[:1]).all())
        if fold and uniform and trace is None:
            key = tuple(float(v) for v in scores[0].tolist())
            if self._folded_scores != key:
                vae_mod, unet_mod = self.modulation(scores[:1])
                self.vae_lora.fold(vae_mod[0])
                self.unet_lora.fold(unet_mod[0])
                self._folded_scores = key
            return None
        self.unfold()
        vae_mod, unet_mod = self.modulation(scores[:1] if uniform else scores, trace)
        self.vae_lora.set_modulation(vae_mod)
        return unet_mod

    def unfold(self) -> None:
        """Back to the unfolded (per-sample modulated) LoRA."""
        self.vae_lora.unfold()
        self.unet_lora.unfold()
        self._folded_scores = None

    # ----------------------------------------------------------------- stages

    def preprocess(self, lr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(upsampled LR in [0, 1], model input in [-1, 1] padded to 64 px), float32."""
        lr = lr.to(device=self.device, dtype=torch.float32)
        upsampled = F.interpolate(lr, scale_factor=scale, mode="bilinear", align_corners=False)
        x_in = reflect_pad_to_multiple((upsampled * 2 - 1).clamp(-1, 1), PAD_MULTIPLE)
        return upsampled, x_in

    def encode(self, x_in: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        """Model input (N, 3, H, W) in [-1, 1] -> scaled latent (N, 4, H/8, W/8) float32."""
        x = x_in.to(self.vae_dtype)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        mean = self.vae.encode(x).latent_dist.mean.float()
        if trace is not None:
            trace["posterior_mean"] = mean
        return mean * self.vae_scale

    def _unet(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        sample = z.to(self.dtype)
        if sample.is_cuda:
            sample = sample.contiguous(memory_format=torch.channels_last)
        t = torch.full((1,), TIMESTEP, device=z.device, dtype=torch.long)
        return self.unet(sample, t, encoder_hidden_states=context, return_dict=False)[0].float()

    def guided_noise(
        self, z: torch.Tensor, unet_mod: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eps_cfg, eps_pos, eps_neg) for latents (N, 4, h, w); unet_mod (N or 1, 10, r, r)
        or None when folded."""
        n = z.shape[0]
        positive, negative = (e[None].expand(n, -1, -1).to(self.dtype) for e in self.prompt_embeds)
        if self.batch_cfg:
            if unet_mod is not None:
                both = unet_mod if unet_mod.shape[0] == 1 else torch.cat([unet_mod, unet_mod])
                self.unet_lora.set_modulation(both)
            eps_pos, eps_neg = self._unet(torch.cat([z, z]), torch.cat([positive, negative])).chunk(
                2
            )
        else:
            if unet_mod is not None:
                self.unet_lora.set_modulation(unet_mod)
            eps_pos = self._unet(z, positive)
            eps_neg = self._unet(z, negative)
        return eps_neg + GUIDANCE_SCALE * (eps_pos - eps_neg), eps_pos, eps_neg

    def tiled_guided_noise(
        self,
        z: torch.Tensor,
        unet_mod: torch.Tensor | None,
        tiling: LatentTiling,
        trace: dict | None = None,
    ) -> torch.Tensor:
        """The official latent tiling: Gaussian-weighted average of per-tile CFG noise.

        Skipped (one whole pass) when h * w <= tile^2; otherwise tiles of min(tile, h, w)
        in the official order (x outer, y inner), batched ``tile_batch`` at a time.
        """
        n, _, h, w = z.shape
        if h * w <= tiling.tile * tiling.tile:
            return self.guided_noise(z, unet_mod)[0]
        size = min(tiling.tile, h, w)
        corners = [
            (y, x)
            for x in latent_tile_starts(w, size, tiling.overlap)
            for y in latent_tile_starts(h, size, tiling.overlap)
        ]
        weights = latent_tile_weights(size).to(z.device)
        noise = torch.zeros_like(z)
        total = torch.zeros_like(z[:1, :1])
        for y, x in corners:
            total[..., y : y + size, x : x + size] += weights
        records: dict[str, list[torch.Tensor]] = {"tile_eps_pos": [], "tile_eps_neg": []}
        for i in range(n):
            mod = None if unet_mod is None else unet_mod[min(i, unet_mod.shape[0] - 1)][None]
            for b0 in range(0, len(corners), self.tile_batch):
                batch = corners[b0 : b0 + self.tile_batch]
                tiles = torch.stack([z[i, :, y : y + size, x : x + size] for y, x in batch])
                eps, eps_pos, eps_neg = self.guided_noise(tiles, mod)
                records["tile_eps_pos"].append(eps_pos)
                records["tile_eps_neg"].append(eps_neg)
                for (y, x), tile_eps in zip(batch, eps, strict=True):
                    noise[i, :, y : y + size, x : x + size] += tile_eps * weights
        if trace is not None:
            trace.update({k: torch.cat(v) for k, v in records.items()})
            trace["tile_weights"] = weights
            trace["tile_corners"] = corners
        return noise / total

    def predict_x0(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The one DDPM step from t=999 to the clean latent, in float32."""
        alpha_bar = self.alpha_bar
        return (z - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latent -> image (N, 3, H, W) float32 in [-1, 1]."""
        latent = (x0 / self.vae_scale).to(self.vae_dtype)
        if latent.is_cuda:
            latent = latent.contiguous(memory_format=torch.channels_last)
        return self.vae.decode(latent, return_dict=False)[0].float().clamp(-1, 1)

    # ----------------------------------------------------------------- the whole thing

    @torch.inference_mode()
    def forward(
        self,
        lr: torch.Tensor,
        scores: torch.Tensor,
        scale: int = 4,
        color_fix: str = "wavelet",
        latent_tiling: LatentTiling | None = None,
        fold: bool = True,
        trace: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Super-resolve LR images.

        Args:
            lr: (N, 3, h, w) float in [0, 1], any device.
            scores: degradation scores, (2,) or (1, 2) for the whole batch, or (N, 2).
            scale: integer upscaling factor (S3Diff was trained at 4).
            color_fix: "wavelet" | "adain" | "none", against the upsampled LR.
            latent_tiling: the official latent tiling (whole-image runs); None: one pass.
            fold: fold the LoRA into the weights when the batch shares one score pair.
            trace: if a dict, filled with every intermediate (and folding is skipped).

        Returns:
            (N, 3, h * scale, w * scale) float32 in [0, 1] on the model's device.
        """
        scores = scores.to(device=self.device, dtype=torch.float32).reshape(-1, 2)
        if scores.shape[0] not in (1, lr.shape[0]):
            raise ValueError(
                f"scores must be (2,) or ({lr.shape[0]}, 2), got {tuple(scores.shape)}"
            )
        height, width = lr.shape[-2] * scale, lr.shape[-1] * scale
        upsampled, x_in = self.preprocess(lr, scale)
        unet_mod = self._prepare_lora(scores, fold, trace)
        z = self.encode(x_in, trace)
        if latent_tiling is None:
            eps, eps_pos, eps_neg = self.guided_noise(z, unet_mod)
            if trace is not None:
                trace.update(eps_pos=eps_pos, eps_neg=eps_neg)
        else:
            eps = self.tiled_guided_noise(z, unet_mod, latent_tiling, trace)
        x0 = self.predict_x0(z, eps)
        decoded = self.decode(x0)[..., :height, :width]
        sr_nofix = decoded * 0.5 + 0.5
        sr = apply_color_fix(sr_nofix, upsampled, color_fix)
        if trace is not None:
            trace.update(
                x_in=x_in, z=z, eps_cfg=eps, x0=x0, sr_nofix=sr_nofix, sr=sr, upsampled=upsampled
            )
        return sr
