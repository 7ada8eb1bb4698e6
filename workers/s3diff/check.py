"""Every problem of a weights directory at once, for ``weights check`` and the preflight.

Loading stops at the first problem; :func:`check_weights` goes on and lists them all,
one actionable line each, so a user can fix a directory in one go. It checks the
SD-Turbo parts, the prompt embeddings (``prompts.py``) and both checkpoints
(``checkpoint.py``); with ``full_size`` it also compares them with the published files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from workers.s3diff.checkpoint import (
    checkpoint_problems,
    fullsize_checkpoint_problems,
    load_de_net_state,
    read_checkpoint_file,
)
from workers.s3diff.loading import read_safetensors
from workers.s3diff.locations import (
    S3DIFF_REPO,
    SD_TURBO_REPO,
    WeightsPaths,
    diffusers_variant,
    download_hint,
)
from workers.s3diff.prompts import prompt_embeds_problems


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_SD_TURBO_CONFIG = {
    "unet": {
        "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 1024,
        "layers_per_block": 2,
        "in_channels": 4,
        "out_channels": 4,
    },
    "vae": {"block_out_channels": [128, 256, 512, 512], "latent_channels": 4},
}


def check_weights(
    root: str | os.PathLike[str] | WeightsPaths, full_size: bool | None = None
) -> list[str]:
    """Every problem of a weights directory, one actionable line each ([] when usable).

    ``full_size`` True compares the checkpoints key by key with the published full-size
    files and the SD-Turbo configs; None decides from ``sd-turbo/unet/config.json``.
    """
    paths = root if isinstance(root, WeightsPaths) else WeightsPaths(Path(root))
    problems: list[str] = []
    if not paths.root.is_dir():
        return [f"{paths.root} does not exist; download {download_hint(paths.root)}"]
    sd_hint = f"download Hugging Face {SD_TURBO_REPO} into {paths.sd_turbo}"
    configs: dict[str, dict[str, Any] | None] = {}
    for part in ("unet", "vae"):
        folder = getattr(paths, part)
        configs[part] = _read_json(folder / "config.json")
        if configs[part] is None:
            problems.append(f"{folder}/config.json is missing or unreadable; {sd_hint}")
        has_weights = (folder / "diffusion_pytorch_model.safetensors").is_file() or (
            diffusers_variant(folder) is not None
        )
        if not has_weights:
            problems.append(
                f"{folder}/diffusion_pytorch_model.safetensors is missing; {sd_hint} "
                "(.bin pickles are not loaded)"
            )
    if _read_json(paths.scheduler / "scheduler_config.json") is None:
        problems.append(f"{paths.scheduler}/scheduler_config.json is missing; {sd_hint}")
    if full_size is None:
        blocks = (configs["unet"] or {}).get("block_out_channels")
        full_size = blocks == _SD_TURBO_CONFIG["unet"]["block_out_channels"]
    if full_size:
        for part, expected in _SD_TURBO_CONFIG.items():
            config = configs[part] or {}
            for key, value in expected.items():
                if configs[part] is not None and config.get(key) != value:
                    problems.append(
                        f"{getattr(paths, part)}/config.json has {key}={config.get(key)!r}, "
                        f"SD-Turbo has {value!r}; {sd_hint}"
                    )
    dim = (configs["unet"] or {}).get("cross_attention_dim")

    if paths.prompt_embeds.is_file():
        try:
            tensors, _ = read_safetensors(paths.prompt_embeds)
            problems += [
                f"{paths.prompt_embeds}: {p}" for p in prompt_embeds_problems(tensors, dim)
            ]
        except UserError as exc:
            problems.append(str(exc))
    elif not (paths.text_encoder.is_dir() and paths.tokenizer.is_dir()):
        problems.append(
            f"{paths.prompt_embeds} is missing, and so is sd-turbo/text_encoder or "
            f"sd-turbo/tokenizer to compute it; {sd_hint}"
        )

    try:
        raw = read_checkpoint_file(paths.s3diff)
    except UserError as exc:
        problems.append(str(exc))
    else:
        hint = f"download s3diff.pkl again from Hugging Face {S3DIFF_REPO}"
        found = checkpoint_problems(raw)
        if full_size:
            found += fullsize_checkpoint_problems(raw)
        problems += [f"{paths.s3diff.name}: {p}; {hint}" for p in dict.fromkeys(found)]

    try:
        load_de_net_state(paths.de_net)
    except UserError as exc:
        problems.append(str(exc))
    return problems
