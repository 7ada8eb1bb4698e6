"""Where S3Diff's weights live: the directory lookup and the name of each file in it.

A weights directory holds::

    sd-turbo/unet/, sd-turbo/vae/, sd-turbo/scheduler/   Hugging Face stabilityai/sd-turbo
    sd-turbo/text_encoder/, sd-turbo/tokenizer/          (only until prompt_embeds exists)
    s3diff.pkl   (or s3diff.safetensors)                 Hugging Face zhangap/S3Diff
    de_net.pth   (or de_net.safetensors)                 Hugging Face zhangap/S3Diff
    prompt_embeds.safetensors                            written here on first use

The directory is, in order: the explicit path (``model.weights``), ``$S3DIFF_WEIGHTS``,
then ``~/.cache/s3diff-sr/weights``. Nothing here reads a weight file (no torch);
``loading.py`` reads them safely, ``checkpoint.py`` and ``prompts.py`` make sense of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

WEIGHTS_ENV = "S3DIFF_WEIGHTS"
SD_TURBO_REPO = "stabilityai/sd-turbo"
S3DIFF_REPO = "zhangap/S3Diff"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "s3diff-sr" / "weights"


def download_hint(root: Path | str) -> str:
    """Where each part of a weights directory under ``root`` comes from, for messages."""
    return (
        f"{root}/sd-turbo from Hugging Face {SD_TURBO_REPO}, {root}/s3diff.pkl and "
        f"{root}/de_net.pth from {S3DIFF_REPO}"
    )


def resolve_weights_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The weights directory: ``explicit``, else ``$S3DIFF_WEIGHTS``, else the user cache."""
    if explicit:
        root, origin = Path(explicit).expanduser(), "model.weights"
    elif os.environ.get(WEIGHTS_ENV):
        root, origin = Path(os.environ[WEIGHTS_ENV]).expanduser(), f"${WEIGHTS_ENV}"
    else:
        root = default_cache_dir()
        if not root.is_dir():
            raise UserError(
                "no S3Diff weights found: pass --weights DIR, set "
                f"${WEIGHTS_ENV}, or download them: {download_hint(root)}"
            )
        return root
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise UserError(
            f"S3Diff weights directory {root} (from {origin}) {what}; "
            f"point it at a folder holding {download_hint('DIR')}"
        )
    return root


@dataclass(frozen=True)
class WeightsPaths:
    """Where each part of a weights directory lives (files may be missing)."""

    root: Path

    @property
    def sd_turbo(self) -> Path:
        return self.root / "sd-turbo"

    @property
    def unet(self) -> Path:
        return self.sd_turbo / "unet"

    @property
    def vae(self) -> Path:
        return self.sd_turbo / "vae"

    @property
    def scheduler(self) -> Path:
        return self.sd_turbo / "scheduler"

    @property
    def text_encoder(self) -> Path:
        return self.sd_turbo / "text_encoder"

    @property
    def tokenizer(self) -> Path:
        return self.sd_turbo / "tokenizer"

    @property
    def prompt_embeds(self) -> Path:
        return self.root / "prompt_embeds.safetensors"

    @property
    def s3diff(self) -> Path:
        """``s3diff.safetensors`` if present (no pickle), else ``s3diff.pkl``."""
        safe = self.root / "s3diff.safetensors"
        return safe if safe.is_file() else self.root / "s3diff.pkl"

    @property
    def de_net(self) -> Path:
        safe = self.root / "de_net.safetensors"
        return safe if safe.is_file() else self.root / "de_net.pth"


def diffusers_variant(model_dir: Path) -> str | None:
    """None when the full-precision safetensors file is there, "fp16" when only that is."""
    if (model_dir / "diffusion_pytorch_model.safetensors").is_file():
        return None
    if (model_dir / "diffusion_pytorch_model.fp16.safetensors").is_file():
        return "fp16"
    return None
