"""The S3Diff checkpoint (``s3diff.pkl``) and the DE network (``de_net.pth``): their
layout, sanity checks, loading into plain tensors, and pickle-free conversion.

``load_s3diff_checkpoint`` and ``load_de_net_state`` are what ``model.py`` builds the
model from; ``checkpoint_problems`` holds for a checkpoint of any size, while
``fullsize_checkpoint_problems`` compares key by key with the published files
(``fullsize_keys.json``). ``convert_to_safetensors`` writes copies that later loads
prefer. Files are read through ``loading.py``, so no pickled code ever runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from workers.s3diff.loading import read_safetensors, safe_torch_load
from workers.s3diff.locations import S3DIFF_REPO, WeightsPaths

FULLSIZE_KEYS_FILE = Path(__file__).with_name("fullsize_keys.json")

# Top-level entries of the official s3diff.pkl, as written by the official save_model.
STATE_DICT_ENTRIES = (
    "state_dict_unet",
    "state_dict_vae",
    "state_dict_vae_de_mlp",
    "state_dict_unet_de_mlp",
    "state_dict_vae_block_mlp",
    "state_dict_unet_block_mlp",
    "state_dict_vae_fuse_mlp",
    "state_dict_unet_fuse_mlp",
)
EMBEDDING_ENTRIES = ("state_dict_vae_block", "state_dict_unet_block")
META_ENTRIES = ("unet_lora_target_modules", "vae_lora_target_modules", "rank_unet", "rank_vae")
ALL_ENTRIES = META_ENTRIES + STATE_DICT_ENTRIES + ("w", "state_embeddings")

# Fixed sizes of the modulation path (independent of the LoRA ranks).
NUM_FOURIER = 64
DE_EMBED_DIM = 256
BLOCK_EMBED_DIM = 64
NUM_VAE_BLOCKS = 6
NUM_UNET_BLOCKS = 10

# What the official code uses when a pickle-free copy lacks its metadata.
DEFAULT_UNET_TARGETS = [
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut",
    "conv_out", "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj",
]  # fmt: skip
DEFAULT_VAE_TARGETS = (
    r"^encoder\..*(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_k|to_q|to_v|to_out\.0)$"
)
UNET_ADAPTER = "default"
VAE_ADAPTER = "vae_skip"


def _flatten_checkpoint(raw: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Official nested dict -> flat tensors (keys joined with '.') plus string metadata."""
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {"format": "s3diff"}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensors[prefix] = value.detach().contiguous()
        elif isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)
        else:
            metadata[prefix] = json.dumps(value)

    for key, value in raw.items():
        walk(key, value)
    return tensors, metadata


def _unflatten_checkpoint(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict:
    """Inverse of :func:`_flatten_checkpoint`; missing metadata falls back to the defaults
    of the official code (and ranks read from the LoRA shapes)."""
    raw: dict[str, Any] = {}
    for key, value in tensors.items():
        head, _, rest = key.partition(".")
        if head == "state_embeddings":
            table, _, rest = rest.partition(".")
            raw.setdefault(head, {}).setdefault(table, {})[rest] = value
        elif rest:
            raw.setdefault(head, {})[rest] = value
        else:
            raw[head] = value
    for key in META_ENTRIES:
        if key in metadata:
            raw[key] = json.loads(metadata[key])
    raw.setdefault("unet_lora_target_modules", list(DEFAULT_UNET_TARGETS))
    raw.setdefault("vae_lora_target_modules", DEFAULT_VAE_TARGETS)
    for rank_key, entry in (("rank_unet", "state_dict_unet"), ("rank_vae", "state_dict_vae")):
        if rank_key not in raw:
            a = next((v for k, v in raw.get(entry, {}).items() if ".lora_A." in k), None)
            if a is not None:
                raw[rank_key] = int(a.shape[0])
    return raw


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """The official s3diff.pkl dict (or its safetensors copy, unflattened)."""
    if not path.is_file():
        raise UserError(
            f"{path} is missing; download s3diff.pkl from Hugging Face {S3DIFF_REPO} into "
            f"{path.parent}"
        )
    if path.suffix == ".safetensors":
        return _unflatten_checkpoint(*read_safetensors(path))
    raw = safe_torch_load(path)
    if not isinstance(raw, dict):
        raise UserError(
            f"{path} holds a {type(raw).__name__}, not the S3Diff checkpoint dict; "
            f"download s3diff.pkl from Hugging Face {S3DIFF_REPO}"
        )
    return raw


@dataclass
class S3DiffCheckpoint:
    """The trainable part of S3Diff, read from s3diff.pkl and checked.

    ``unet``/``vae`` are state-dict fragments for the peft-wrapped models (LoRA tensors
    plus the UNet's fully trained ``conv_in``); ``modulation`` uses the parameter names of
    ``model.DegradationModulation``.
    """

    rank_unet: int
    rank_vae: int
    unet_lora_targets: list[str]
    vae_lora_targets: str | list[str]
    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    modulation: dict[str, torch.Tensor]


def _shape(t: Any) -> list[int] | None:
    return list(t.shape) if isinstance(t, torch.Tensor) else None


def _few(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _lora_problems(
    entry: str, state: dict[str, Any], rank: Any, adapter: str, allowed_plain: tuple[str, ...]
) -> list[str]:
    problems = []
    a_keys = {k for k in state if ".lora_A." in k}
    b_keys = {k for k in state if ".lora_B." in k}
    plain = sorted(k for k in state if ".lora_" not in k and k not in allowed_plain)
    if plain:
        problems.append(f"{entry} has entries that are not LoRA tensors: {_few(plain)}")
    for k in sorted(allowed_plain):
        if k not in state:
            problems.append(f"{entry} lacks {k}")
    if not a_keys:
        problems.append(f"{entry} holds no LoRA tensors")
    wrong_adapter = sorted(k for k in a_keys | b_keys if f".{adapter}.weight" not in k)
    if wrong_adapter:
        problems.append(
            f"{entry}: LoRA keys must use adapter name {adapter!r}, e.g. {wrong_adapter[0]}"
        )
    unpaired = sorted(
        {k for k in a_keys if k.replace(".lora_A.", ".lora_B.") not in b_keys}
        | {k for k in b_keys if k.replace(".lora_B.", ".lora_A.") not in a_keys}
    )
    if unpaired:
        problems.append(f"{entry}: LoRA tensors without their A/B partner: {_few(unpaired)}")
    if isinstance(rank, int):
        bad = sorted(
            k for k in a_keys if _shape(state[k]) is None or _shape(state[k])[0] != rank
        ) + sorted(
            k
            for k in b_keys
            if _shape(state[k]) is None or len(_shape(state[k])) < 2 or _shape(state[k])[1] != rank
        )
        if bad:
            problems.append(f"{entry}: LoRA tensors whose rank is not {rank}: {_few(bad)}")
    return problems


def _expect_shapes(entry: str, state: Any, expected: dict[str, list[int]]) -> list[str]:
    if not isinstance(state, dict):
        return [f"{entry} is a {type(state).__name__}, expected a state dict"]
    problems = []
    missing = [k for k in expected if k not in state]
    extra = sorted(k for k in state if k not in expected)
    if missing:
        problems.append(f"{entry} lacks {_few(missing)}")
    if extra:
        problems.append(f"{entry} has unexpected entries {_few(extra)}")
    wrong = [k for k, shape in expected.items() if k in state and _shape(state[k]) != shape]
    if len(wrong) == 1:
        key = wrong[0]
        problems.append(f"{entry}.{key} has shape {_shape(state[key])}, expected {expected[key]}")
    elif wrong:
        key = wrong[0]
        problems.append(
            f"{entry}: {len(wrong)} tensors have unexpected shapes, e.g. {key} "
            f"{_shape(state[key])} instead of {expected[key]}"
        )
    return problems


def checkpoint_problems(raw: dict[str, Any]) -> list[str]:
    """Sanity checks that hold for any S3Diff checkpoint, whatever the model size."""
    problems = []
    missing = [k for k in ALL_ENTRIES if k not in raw]
    if missing:
        problems.append(f"missing entries {_few(missing, 5)}")
    extra = sorted(k for k in raw if k not in ALL_ENTRIES)
    if extra:
        problems.append(f"unexpected entries {_few(extra)}")
    ranks = {}
    for key in ("rank_unet", "rank_vae"):
        value = raw.get(key)
        if key in raw and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{key} must be a positive integer, got {value!r}")
        ranks[key] = value if isinstance(value, int) else None
    targets = raw.get("unet_lora_target_modules")
    if "unet_lora_target_modules" in raw and not (
        isinstance(targets, list) and all(isinstance(t, str) for t in targets)
    ):
        problems.append("unet_lora_target_modules must be a list of module names")
    vae_targets = raw.get("vae_lora_target_modules")
    if "vae_lora_target_modules" in raw and not isinstance(vae_targets, (str, list)):
        problems.append("vae_lora_target_modules must be a regex string or a list of names")
    for entry in STATE_DICT_ENTRIES:
        if entry in raw and not isinstance(raw[entry], dict):
            problems.append(f"{entry} is a {type(raw[entry]).__name__}, expected a state dict")
    if isinstance(raw.get("state_dict_unet"), dict):
        problems += _lora_problems(
            "state_dict_unet",
            raw["state_dict_unet"],
            ranks["rank_unet"],
            UNET_ADAPTER,
            ("conv_in.weight", "conv_in.bias"),
        )
    if isinstance(raw.get("state_dict_vae"), dict):
        problems += _lora_problems(
            "state_dict_vae", raw["state_dict_vae"], ranks["rank_vae"], VAE_ADAPTER, ()
        )
    mlp = {"0.weight": [DE_EMBED_DIM, DE_EMBED_DIM], "0.bias": [DE_EMBED_DIM]}
    block = {"0.weight": [BLOCK_EMBED_DIM, BLOCK_EMBED_DIM], "0.bias": [BLOCK_EMBED_DIM]}
    for part in ("vae", "unet"):
        rank = ranks[f"rank_{part}"]
        fuse_out = rank * rank if rank else None
        for entry, expected in (
            (f"state_dict_{part}_de_mlp", mlp),
            (f"state_dict_{part}_block_mlp", block),
            (
                f"state_dict_{part}_fuse_mlp",
                {"weight": [fuse_out, DE_EMBED_DIM + BLOCK_EMBED_DIM], "bias": [fuse_out]},
            ),
        ):
            if isinstance(raw.get(entry), dict):
                problems += _expect_shapes(entry, raw[entry], expected)
    if "w" in raw and _shape(raw["w"]) != [NUM_FOURIER]:
        problems.append(f"w has shape {_shape(raw['w'])}, expected [{NUM_FOURIER}]")
    emb = raw.get("state_embeddings")
    if "state_embeddings" in raw:
        if not isinstance(emb, dict):
            problems.append("state_embeddings must be a dict of two embedding tables")
        else:
            for name, rows in zip(
                EMBEDDING_ENTRIES, (NUM_VAE_BLOCKS, NUM_UNET_BLOCKS), strict=True
            ):
                if name not in emb:
                    problems.append(f"state_embeddings lacks {name}")
                else:
                    problems += _expect_shapes(
                        f"state_embeddings.{name}", emb[name], {"weight": [rows, BLOCK_EMBED_DIM]}
                    )
    if not problems:
        tensors = _flatten_checkpoint(raw)[0]
        bad = [k for k, t in tensors.items() if not t.is_floating_point()]
        bad += [k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:
            problems.append(f"tensors that are not finite floats: {_few(bad)}")
    return problems


def fullsize_checkpoint_problems(raw: dict[str, Any]) -> list[str]:
    """Exact comparison with the keys and shapes of the published full-size s3diff.pkl."""
    spec = json.loads(FULLSIZE_KEYS_FILE.read_text())["top_level"]
    problems = []
    for entry, info in spec.items():
        if entry not in raw:
            continue  # reported by checkpoint_problems
        if "keys" in info:
            expected = {k: shape for k, shape, _ in info["keys"]}
            problems += _expect_shapes(entry, raw[entry], expected)
        elif "value" in info and raw[entry] != info["value"]:
            problems.append(
                f"{entry} is {raw[entry]!r}, the published checkpoint has {info['value']!r}"
            )
        elif entry == "w" and _shape(raw[entry]) != info["shape"]:
            problems.append(f"w has shape {_shape(raw['w'])}, expected {info['shape']}")
        elif entry == "state_embeddings" and isinstance(raw[entry], dict):
            for name, table in info["entries"].items():
                expected = {k: shape for k, shape, _ in table["keys"]}
                problems += _expect_shapes(f"{entry}.{name}", raw[entry].get(name, {}), expected)
    return problems


def _to_checkpoint(raw: dict[str, Any]) -> S3DiffCheckpoint:
    modulation = {"W": raw["w"].detach().float().reshape(-1)}
    for part in ("vae", "unet"):
        for kind in ("de_mlp", "block_mlp", "fuse_mlp"):
            for key, value in raw[f"state_dict_{part}_{kind}"].items():
                modulation[f"{part}_{kind}.{key}"] = value.float()
        table = raw["state_embeddings"][f"state_dict_{part}_block"]["weight"]
        modulation[f"{part}_block_embeddings.weight"] = table.float()
    return S3DiffCheckpoint(
        rank_unet=int(raw["rank_unet"]),
        rank_vae=int(raw["rank_vae"]),
        unet_lora_targets=list(raw["unet_lora_target_modules"]),
        vae_lora_targets=raw["vae_lora_target_modules"],
        unet={k: v.float() for k, v in raw["state_dict_unet"].items()},
        vae={k: v.float() for k, v in raw["state_dict_vae"].items()},
        modulation=modulation,
    )


def load_s3diff_checkpoint(path: Path) -> S3DiffCheckpoint:
    """Read and sanity-check s3diff.pkl / s3diff.safetensors; UserError on any problem."""
    raw = read_checkpoint_file(path)
    problems = checkpoint_problems(raw)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UserError(
            f"{path} is not a usable S3Diff checkpoint: {problems[0]}{more}; download "
            f"s3diff.pkl again from Hugging Face {S3DIFF_REPO}"
        )
    return _to_checkpoint(raw)


def _de_net_expected() -> dict[str, list[int]]:
    spec = json.loads(FULLSIZE_KEYS_FILE.read_text())["de_net"]
    return {k: shape for k, shape, _ in spec["keys"]}


def load_de_net_state(path: Path) -> dict[str, torch.Tensor]:
    """The DEResNet state dict from de_net.pth / de_net.safetensors, keys and shapes checked."""
    if not path.is_file():
        raise UserError(
            f"{path} is missing; download de_net.pth from Hugging Face {S3DIFF_REPO} into "
            f"{path.parent}"
        )
    if path.suffix == ".safetensors":
        state, _ = read_safetensors(path)
    else:
        state = safe_torch_load(path)
    problems = _expect_shapes(path.name, state, _de_net_expected())
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UserError(
            f"{path} is not the DEResNet state dict S3Diff uses: {problems[0]}{more}; "
            f"download de_net.pth again from Hugging Face {S3DIFF_REPO}"
        )
    return {k: v.float() for k, v in state.items()}


def convert_to_safetensors(root: str | os.PathLike[str]) -> list[Path]:
    """Write pickle-free ``s3diff.safetensors`` / ``de_net.safetensors`` next to the
    pickles (read with weights_only=True); later loads prefer them. Returns the paths."""
    from safetensors.torch import save_file

    paths = WeightsPaths(Path(root))
    written = []
    pkl = paths.root / "s3diff.pkl"
    if pkl.is_file():
        raw = read_checkpoint_file(pkl)
        problems = checkpoint_problems(raw)
        if problems:
            raise UserError(f"{pkl} is not a usable S3Diff checkpoint: {problems[0]}")
        tensors, metadata = _flatten_checkpoint(raw)
        out = paths.root / "s3diff.safetensors"
        save_file(tensors, str(out), metadata=metadata)
        written.append(out)
    pth = paths.root / "de_net.pth"
    if pth.is_file():
        state = load_de_net_state(pth)
        out = paths.root / "de_net.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(out))
        written.append(out)
    if not written:
        raise UserError(f"neither s3diff.pkl nor de_net.pth is in {paths.root}; nothing to convert")
    return written
