"""Where S3Diff's weights live: the directory lookup and the name of each file in it.

A weights directory holds::

    sd-turbo/unet/, sd-turbo/vae/, sd-turbo/scheduler/   Hugging Face stabilityai/sd-turbo
    sd-turbo/text_encoder/, sd-turbo/tokenizer/          (only until prompt_embeds exists)
    s3diff.pkl   (or s3diff.safetensors)                 Hugging Face zhangap/S3Diff
    de_net.pth   (or de_net.safetensors)                 Hugging Face zhangap/S3Diff
    prompt_embeds.safetensors                            written here on first use

The weights are, in order: the explicit directory (``--weights``, ``model.weights``),
``$S3DIFF_WEIGHTS``, ``~/.cache/s3diff-sr/weights``, then the Hugging Face cache, where
``weights download`` puts the two repositories (their snapshots are used in place; the
prompt embeddings go to ``~/.cache/s3diff-sr/prompt_embeds.safetensors``). Nothing here
reads a weight file or imports torch, so the driver may call :func:`find_weights` by
name; ``loading.py`` reads them safely, ``checkpoint.py`` and ``prompts.py`` make sense
of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

WEIGHTS_ENV = "S3DIFF_WEIGHTS"
SD_TURBO_REPO = "stabilityai/sd-turbo"
S3DIFF_REPO = "zhangap/S3Diff"


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"))


def default_cache_dir() -> Path:
    return _cache_home() / "s3diff-sr" / "weights"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as ``huggingface_hub`` finds it (same variables)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    home = os.environ.get("HF_HOME") or str(_cache_home() / "huggingface")
    return Path(home).expanduser() / "hub"


def hub_snapshot(repo: str, revision: str = "main") -> Path | None:
    """The cached snapshot folder of a hub model repository at ``revision``, if any."""
    folder = hub_cache_dir() / ("models--" + repo.replace("/", "--"))
    try:
        commit = (folder / "refs" / revision).read_text().strip()
    except OSError:
        return None
    snapshot = folder / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


def hub_weights() -> WeightsPaths | None:
    """The weights in the Hugging Face cache (both repositories cached), or None."""
    sd_turbo, s3diff = hub_snapshot(SD_TURBO_REPO), hub_snapshot(S3DIFF_REPO)
    if sd_turbo is None or s3diff is None:
        return None
    return WeightsPaths(s3diff, sd_turbo_dir=sd_turbo, prompt_embeds_file=hub_prompt_embeds())


def hub_prompt_embeds() -> Path:
    """Where the prompt embeddings of the Hugging Face cache's SD-Turbo are kept."""
    return _cache_home() / "s3diff-sr" / "prompt_embeds.safetensors"


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
                f"${WEIGHTS_ENV}, or get them with 'run_pipeline.py weights download' "
                f"(or put {download_hint(root)})"
            )
        return root
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise UserError(
            f"S3Diff weights directory {root} (from {origin}) {what}; "
            f"point it at a folder holding {download_hint('DIR')}"
        )
    return root


def resolve_weights(explicit: str | os.PathLike[str] | None = None) -> WeightsPaths:
    """The weights: a directory (``resolve_weights_dir``), else the Hugging Face cache."""
    if explicit or os.environ.get(WEIGHTS_ENV) or default_cache_dir().is_dir():
        return WeightsPaths(resolve_weights_dir(explicit))
    found = hub_weights()
    if found is None:
        resolve_weights_dir(None)  # raises the "no weights found" error
        raise AssertionError("unreachable")
    return found


def find_weights(explicit: str | None = None) -> str | None:
    """Where the weights are (a path, for messages) or None; no file is read. The
    driver calls this by name to choose the default model."""
    try:
        paths = resolve_weights(explicit)
    except UserError:
        return None
    if explicit or os.environ.get(WEIGHTS_ENV):
        return str(paths.root)
    # An implicit location counts only when it holds the checkpoint.
    return str(paths.root) if paths.s3diff.is_file() else None


@dataclass(frozen=True)
class WeightsPaths:
    """Where each part of the weights lives (files may be missing): a directory in the
    project's layout (``root``), or two Hugging Face snapshots (``root`` the S3Diff one,
    ``sd_turbo_dir`` SD-Turbo's) and a prompt-embeddings file of our own."""

    root: Path
    sd_turbo_dir: Path | None = None
    prompt_embeds_file: Path | None = None

    @property
    def sd_turbo(self) -> Path:
        return self.sd_turbo_dir or self.root / "sd-turbo"

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
        return self.prompt_embeds_file or self.root / "prompt_embeds.safetensors"

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
