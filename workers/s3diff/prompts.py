"""The prompt embeddings S3Diff conditions its UNet on, computed once and cached.

S3Diff always uses the same positive and negative prompt, so their CLIP embeddings are
computed once with sd-turbo's text encoder and stored as ``prompt_embeds.safetensors``
in the weights directory (``locations.py``); after that the text encoder and
tokenizer are no longer needed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pipeline.errors import UserError
from workers.s3diff.loading import read_safetensors
from workers.s3diff.locations import SD_TURBO_REPO, WeightsPaths

logger = logging.getLogger(__name__)

POSITIVE_PROMPT = (
    "A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, "
    "and natural lighting."
)
NEGATIVE_PROMPT = (
    "oil painting, cartoon, blur, dirty, messy, low quality, deformation, low resolution, "
    "oversmooth"
)
PROMPT_TOKENS = 77


def compute_prompt_embeds(paths: WeightsPaths) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP last_hidden_state (1, 77, D) of the official positive and negative prompts.

    Loads sd-turbo's tokenizer and text encoder (once; the caller stores the result) and,
    like the official code, feeds the padded ids without an attention mask.
    """
    from transformers import AutoTokenizer, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(str(paths.tokenizer), local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(
        str(paths.text_encoder), use_safetensors=True, local_files_only=True
    )
    encoder.eval()
    embeds = []
    with torch.inference_mode():
        for prompt in (POSITIVE_PROMPT, NEGATIVE_PROMPT):
            ids = tokenizer(
                prompt,
                max_length=tokenizer.model_max_length,
                padding="max_length",
                truncation=True,
                return_tensors="pt",
            ).input_ids
            embeds.append(encoder(ids)[0].float().clone())
    return embeds[0], embeds[1]


def save_prompt_embeds(path: Path, positive: torch.Tensor, negative: torch.Tensor) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {"positive": positive.contiguous(), "negative": negative.contiguous()},
        str(tmp),
        metadata={"positive_prompt": POSITIVE_PROMPT, "negative_prompt": NEGATIVE_PROMPT},
    )
    os.replace(tmp, path)


def load_prompt_embeds(paths: WeightsPaths) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative), each (1, 77, D) float32; computed and cached on first use."""
    if paths.prompt_embeds.is_file():
        tensors, _ = read_safetensors(paths.prompt_embeds)
        problems = prompt_embeds_problems(tensors)
        if problems:
            raise UserError(
                f"{paths.prompt_embeds}: {problems[0]}; delete it to recompute it from "
                "sd-turbo/text_encoder"
            )
        return tensors["positive"].float(), tensors["negative"].float()
    if not (paths.text_encoder.is_dir() and paths.tokenizer.is_dir()):
        raise UserError(
            f"{paths.prompt_embeds} is missing and so is sd-turbo/text_encoder or tokenizer "
            f"to compute it; download them from Hugging Face {SD_TURBO_REPO} into "
            f"{paths.sd_turbo}"
        )
    logger.info("computing S3Diff prompt embeddings with %s", paths.text_encoder)
    positive, negative = compute_prompt_embeds(paths)
    try:
        save_prompt_embeds(paths.prompt_embeds, positive, negative)
    except OSError as exc:
        logger.warning("could not cache prompt embeddings at %s: %s", paths.prompt_embeds, exc)
    return positive, negative


def prompt_embeds_problems(tensors: dict[str, torch.Tensor], dim: int | None = None) -> list[str]:
    """What is wrong with a prompt_embeds file's tensors ([] when usable); ``dim`` is the
    UNet's cross-attention width when known."""
    problems = []
    for key in ("positive", "negative"):
        value = tensors.get(key)
        shape = list(value.shape) if isinstance(value, torch.Tensor) else None
        if shape is None:
            problems.append(f"lacks the tensor {key!r}")
        elif len(shape) != 3 or shape[:2] != [1, PROMPT_TOKENS] or (dim and shape[2] != dim):
            want = f"[1, {PROMPT_TOKENS}, {dim or 'D'}]"
            problems.append(f"tensor {key!r} has shape {shape}, expected {want}")
    return problems
