"""Write an official-format S3Diff weights folder with random weights, for runs without
downloads: ``python bench/random_weights.py DIR --size full|tiny``.

``full`` has SD-Turbo's UNet and VAE configs (``workers/s3diff/fullsize_keys.json``),
``s3diff.pkl`` with the published LoRA ranks (UNet 32, VAE 16) and target lists, the
full-size ``de_net.pth`` and random prompt embeddings: ``weights check --full-size``
accepts it and every speed measured with it is the real model's (the values are noise).
It is about 3.9 GB in fp32 and needs as much memory; ``tiny`` (ranks 16/4, widths
8..32) takes seconds. The checkpoint's keys come from peft wrapping the built models,
as in the official code, so the same code serves both sizes; :func:`checkpoint_shapes`
works on the meta device, without allocating anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workers.s3diff.checkpoint import (  # noqa: E402
    BLOCK_EMBED_DIM,
    DE_EMBED_DIM,
    DEFAULT_UNET_TARGETS,
    DEFAULT_VAE_TARGETS,
    FULLSIZE_KEYS_FILE,
    NUM_FOURIER,
    NUM_UNET_BLOCKS,
    NUM_VAE_BLOCKS,
    UNET_ADAPTER,
    VAE_ADAPTER,
)

SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "sample_max_value": 1.0,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
RANKS = {"full": (32, 16), "tiny": (16, 4)}  # (unet, vae)
TINY = {
    "unet": {"block_out_channels": [8, 16, 32, 32], "attention_head_dim": [2, 4, 8, 8],
             "norm_num_groups": 4, "cross_attention_dim": 32},
    "vae": {"block_out_channels": [8, 16, 32, 32], "norm_num_groups": 4},
}  # fmt: skip


def model_configs(size: str) -> dict[str, dict[str, Any]]:
    """The diffusers configs of the UNet and VAE (SD-Turbo's, or its tiny stand-in)."""
    spec = json.loads(FULLSIZE_KEYS_FILE.read_text())
    configs = {"unet": spec["unet_config_used"], "vae": spec["vae_config_used"]}
    if size == "tiny":
        configs = {part: {**cfg, **TINY[part]} for part, cfg in configs.items()}
    return configs


def build_models(size: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The UNet and VAE with S3Diff's LoRA adapters (peft), on the current device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig

    configs = model_configs(size)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    rank_unet, rank_vae = RANKS[size]
    vae.add_adapter(
        LoraConfig(r=rank_vae, init_lora_weights="gaussian", target_modules=DEFAULT_VAE_TARGETS),
        adapter_name=VAE_ADAPTER,
    )
    unet.add_adapter(
        LoraConfig(r=rank_unet, init_lora_weights="gaussian", target_modules=DEFAULT_UNET_TARGETS),
        adapter_name=UNET_ADAPTER,
    )
    return unet, vae


def _base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's own weights, without the adapters (what diffusers saves)."""
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


def checkpoint_shapes(unet: torch.nn.Module, vae: torch.nn.Module, size: str) -> dict[str, Any]:
    """Entry -> {key: shape} of the s3diff.pkl these models take (works on meta)."""
    rank_unet, rank_vae = RANKS[size]
    unet_keys = {k: list(v.shape) for k, v in unet.state_dict().items()
                 if "lora" in k or "conv_in" in k}  # fmt: skip
    vae_keys = {k: list(v.shape) for k, v in vae.state_dict().items()
                if "lora" in k or "skip_conv" in k}  # fmt: skip
    shapes: dict[str, Any] = {"state_dict_unet": unet_keys, "state_dict_vae": vae_keys}
    cat = DE_EMBED_DIM + BLOCK_EMBED_DIM
    for part, rank in (("vae", rank_vae), ("unet", rank_unet)):
        shapes[f"state_dict_{part}_de_mlp"] = {
            "0.weight": [DE_EMBED_DIM, 4 * NUM_FOURIER], "0.bias": [DE_EMBED_DIM]}  # fmt: skip
        block = BLOCK_EMBED_DIM
        shapes[f"state_dict_{part}_block_mlp"] = {"0.weight": [block, block], "0.bias": [block]}
        shapes[f"state_dict_{part}_fuse_mlp"] = {
            "weight": [rank * rank, cat],
            "bias": [rank * rank],
        }
    return shapes


def random_checkpoint(unet: torch.nn.Module, vae: torch.nn.Module, size: str) -> dict[str, Any]:
    """An s3diff.pkl dict: the official entries, random tensors of the right shapes."""
    rank_unet, rank_vae = RANKS[size]
    g = torch.Generator().manual_seed(2001)

    def rand(shape: list[int], scale: float) -> torch.Tensor:
        return torch.randn(shape, generator=g) * scale

    raw: dict[str, Any] = {
        "unet_lora_target_modules": list(DEFAULT_UNET_TARGETS),
        "vae_lora_target_modules": DEFAULT_VAE_TARGETS,
        "rank_unet": rank_unet,
        "rank_vae": rank_vae,
    }
    own = {**{f"unet.{k}": v for k, v in unet.state_dict().items()}}
    for entry, keys in checkpoint_shapes(unet, vae, size).items():
        state = {}
        for key, shape in keys.items():
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            if entry == "state_dict_unet" and key.startswith("conv_in"):
                state[key] = own[f"unet.{key}"].detach().clone()
            elif len(shape) > 1:
                state[key] = rand(shape, (1.0 / fan_in) ** 0.5)
            else:
                state[key] = rand(shape, 0.01)
        raw[entry] = state
    raw["w"] = torch.nn.Parameter(rand([NUM_FOURIER], 1.0), requires_grad=False)
    raw["state_embeddings"] = {
        "state_dict_vae_block": {"weight": rand([NUM_VAE_BLOCKS, BLOCK_EMBED_DIM], 1.0)},
        "state_dict_unet_block": {"weight": rand([NUM_UNET_BLOCKS, BLOCK_EMBED_DIM], 1.0)},
    }
    return raw


def write_random_weights(root: Path, size: str) -> None:
    from safetensors.torch import save_file

    from workers.s3diff.degradation import DEResNet
    from workers.s3diff.prompts import save_prompt_embeds

    torch.manual_seed(0)
    unet, vae = build_models(size)
    sd = root / "sd-turbo"
    for part, model in (("unet", unet), ("vae", vae)):
        (sd / part).mkdir(parents=True, exist_ok=True)
        (sd / part / "config.json").write_text(json.dumps(dict(model.config), indent=2))
        state = {k: v.contiguous() for k, v in _base_state(model).items()}
        save_file(state, str(sd / part / "diffusion_pytorch_model.safetensors"))
    (sd / "scheduler").mkdir(parents=True, exist_ok=True)
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    torch.save(random_checkpoint(unet, vae, size), root / "s3diff.pkl")
    torch.save(DEResNet().state_dict(), root / "de_net.pth")
    dim = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(7)
    positive, negative = (torch.randn(1, 77, dim, generator=g) for _ in range(2))
    save_prompt_embeds(root / "prompt_embeds.safetensors", positive, negative)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--size", choices=["full", "tiny"], required=True)
    args = p.parse_args(argv)
    write_random_weights(args.dir, args.size)
    print(f"wrote {args.size} random S3Diff weights to {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
