"""Reading weight files without ever running code from them.

Pickles (``.pkl``, ``.pth``) are read with ``torch.load(weights_only=True)`` only: a
file that would need to run code to load is refused with a UserError, as is a damaged
one. Safetensors files are read as they are. Both return plain CPU tensors; what they
mean is ``checkpoint.py``'s and ``prompts.py``'s business.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from workers.s3diff.locations import S3DIFF_REPO


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` that never runs code from the file; refusals become a UserError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        code = [ln for ln in lines if "GLOBAL" in ln or "global" in ln.split(" ")[:3]]
        if code:
            raise UserError(
                f"refusing to load {path}: it needs to run pickled code, which is never "
                f"allowed ({code[0][:160]}); download the original from Hugging Face "
                f"{S3DIFF_REPO} or, if you trust the file, convert it to .safetensors yourself"
            ) from None
        detail = next((ln for ln in lines if "Unsupported" in ln), lines[-1] if lines else "")
        raise UserError(
            f"cannot read {path} safely ({detail[:160]}): the file is damaged, not a torch "
            f"checkpoint, or uses pickle features that are refused; download it again from "
            f"Hugging Face {S3DIFF_REPO}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"cannot read {path} as a torch checkpoint ({first[:160]}); the file is damaged "
            f"or not a checkpoint: download it again from Hugging Face {S3DIFF_REPO}"
        ) from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, string metadata) of a safetensors file; a damaged one is a UserError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise UserError(f"cannot read {path} as safetensors ({exc}); recreate it") from None
    return tensors, metadata
