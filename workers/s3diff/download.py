"""``weights download``: fetch S3Diff's weights from the Hugging Face hub, once.

Only the parts the model loads are fetched: SD-Turbo's UNet, VAE and scheduler config
(fp32 safetensors), its tokenizer and text encoder only while the prompt embeddings are
not cached yet, and S3Diff's ``s3diff.pkl`` and ``de_net.pth``. By default they go to
the Hugging Face cache and are used from there (``locations.hub_weights``); with a
directory they go there, in the project's layout. ``huggingface_hub`` resumes an
interrupted download and, with ``HF_HUB_OFFLINE=1``, answers from the cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import UserError
from workers.s3diff.locations import (
    S3DIFF_REPO,
    SD_TURBO_REPO,
    WeightsPaths,
    hub_cache_dir,
    hub_prompt_embeds,
    hub_weights,
)

log = logging.getLogger(__name__)

SD_TURBO_FILES = [
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
]
TEXT_FILES = ["text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/*"]
S3DIFF_FILES = ["s3diff.pkl", "de_net.pth"]


def _fetch(repo: str, patterns: list[str], local_dir: Path | None) -> Path:
    """One repository's files (a snapshot folder or ``local_dir``); failures in one line."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        where = snapshot_download(
            repo,
            allow_patterns=patterns,
            local_dir=str(local_dir) if local_dir else None,
        )
    except LocalEntryNotFoundError:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        place = local_dir or hub_cache_dir()
        raise UserError(
            f"cannot reach the Hugging Face hub{offline} and {repo} is not in {place}; on a "
            f"machine with a network run 'run_pipeline.py weights download"
            f"{' DIR' if local_dir else ''}' and copy {place} here (or set HF_HUB_CACHE)"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"downloading {repo} failed: {first[:200]}; run it again to resume"
        ) from None
    return Path(where)


def download_weights(local_dir: Path | None = None) -> WeightsPaths:
    """Fetch what is missing, compute the prompt embeddings once; the weights' paths."""
    from workers.s3diff.prompts import load_prompt_embeds

    embeds = WeightsPaths(local_dir).prompt_embeds if local_dir else hub_prompt_embeds()
    # The text encoder (1.4 GB) is needed only to compute the embeddings, once.
    sd_files = SD_TURBO_FILES + ([] if embeds.is_file() else TEXT_FILES)
    if local_dir is not None:
        paths = WeightsPaths(local_dir)
        _fetch(SD_TURBO_REPO, sd_files, paths.sd_turbo)
        _fetch(S3DIFF_REPO, S3DIFF_FILES, local_dir)
    else:
        _fetch(SD_TURBO_REPO, sd_files, None)
        _fetch(S3DIFF_REPO, S3DIFF_FILES, None)
        found = hub_weights()
        if found is None:
            raise UserError(f"the download finished but {hub_cache_dir()} lacks a snapshot")
        paths = found
    embeds.parent.mkdir(parents=True, exist_ok=True)
    load_prompt_embeds(paths)  # computes and caches them when missing
    return paths
