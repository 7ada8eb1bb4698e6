"""Finding, checking and safely loading S3Diff weights (official formats, tiny files)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import string
from pathlib import Path

import pytest
import torch

from pipeline.errors import UserError

GOLDEN = Path(__file__).parent / "data" / "golden"
WEIGHTS = GOLDEN / "weights"


def make_weights_dir(tmp_path: Path, prompt_embeds: bool = True) -> Path:
    """A private copy of the golden weights (sd-turbo/ parts linked, not copied)."""
    root = tmp_path / "weights"
    (root / "sd-turbo").mkdir(parents=True)
    for part in ("unet", "vae", "scheduler"):
        (root / "sd-turbo" / part).symlink_to(WEIGHTS / "sd-turbo" / part)
    names = ["s3diff.pkl", "de_net.pth"] + (["prompt_embeds.safetensors"] if prompt_embeds else [])
    for name in names:
        shutil.copy(WEIGHTS / name, root / name)
    return root


def edit_checkpoint(root: Path, edit) -> None:
    path = root / "s3diff.pkl"
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)


@pytest.mark.unit
def test_resolution_order(tmp_path, monkeypatch):
    from workers.s3diff.locations import default_cache_dir, resolve_weights_dir

    explicit, env, cache_home = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    explicit.mkdir()
    env.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.setenv("S3DIFF_WEIGHTS", str(env))
    assert resolve_weights_dir(str(explicit)) == explicit
    assert resolve_weights_dir(None) == env
    monkeypatch.delenv("S3DIFF_WEIGHTS")
    assert default_cache_dir() == cache_home / "s3diff-sr" / "weights"
    with pytest.raises(UserError, match="S3DIFF_WEIGHTS.*stabilityai/sd-turbo.*zhangap/S3Diff"):
        resolve_weights_dir(None)
    default_cache_dir().mkdir(parents=True)
    assert resolve_weights_dir(None) == default_cache_dir()
    with pytest.raises(UserError, match="does not exist") as err:
        resolve_weights_dir(str(tmp_path / "nope"))
    assert "\n" not in str(err.value)


@pytest.mark.model
def test_check_weights_on_golden_and_packaged_keys():
    from workers.s3diff.check import check_weights
    from workers.s3diff.checkpoint import FULLSIZE_KEYS_FILE

    assert check_weights(WEIGHTS) == []
    assert json.loads(FULLSIZE_KEYS_FILE.read_text()) == json.loads(
        (GOLDEN / "s3diff_fullsize_keys.json").read_text()
    )
    # Against the published full-size layout, the tiny files are wrong in many ways.
    problems = check_weights(WEIGHTS, full_size=True)
    text = "\n".join(problems)
    assert "block_out_channels" in text and "rank_unet is 16" in text
    assert "state_dict_unet: 516 tensors have unexpected shapes" in text
    assert all("\n" not in p for p in problems)


@pytest.mark.unit
def test_check_weights_names_every_missing_file(tmp_path):
    from workers.s3diff.check import check_weights

    problems = check_weights(tmp_path)
    text = "\n".join(problems)
    for needle in (
        "unet/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "scheduler_config.json",
        "prompt_embeds.safetensors",
        "s3diff.pkl is missing",
        "de_net.pth is missing",
        "stabilityai/sd-turbo",
        "zhangap/S3Diff",
    ):
        assert needle in text, needle


@pytest.mark.model
def test_missing_and_extra_keys_give_clear_errors(tmp_path):
    from workers.s3diff.check import check_weights
    from workers.s3diff.checkpoint import load_s3diff_checkpoint
    from workers.s3diff.model import S3Diff

    root = make_weights_dir(tmp_path)
    key = "down_blocks.0.attentions.0.proj_in.lora_B.default.weight"
    edit_checkpoint(root, lambda raw: raw["state_dict_unet"].pop(key))
    with pytest.raises(UserError, match="without their A/B partner.*proj_in") as err:
        load_s3diff_checkpoint(root / "s3diff.pkl")
    assert "zhangap/S3Diff" in str(err.value) and "\n" not in str(err.value)
    assert any("proj_in" in p for p in check_weights(root))

    # Paired LoRA tensors for a layer the UNet does not have: only the model can tell.
    root = make_weights_dir(tmp_path / "extra")

    def add_layer(raw):
        raw["state_dict_unet"]["foo.lora_A.default.weight"] = torch.zeros(16, 8)
        raw["state_dict_unet"]["foo.lora_B.default.weight"] = torch.zeros(8, 16)

    edit_checkpoint(root, add_layer)
    with pytest.raises(UserError, match="no place for, e.g. foo.lora_A"):
        S3Diff.from_pretrained(root)

    root = make_weights_dir(tmp_path / "top")
    edit_checkpoint(root, lambda raw: raw.update(surprise=1))
    with pytest.raises(UserError, match="unexpected entries surprise"):
        load_s3diff_checkpoint(root / "s3diff.pkl")

    root = make_weights_dir(tmp_path / "rank")
    edit_checkpoint(root, lambda raw: raw.update(rank_unet=8))
    with pytest.raises(UserError, match="rank is not 8"):
        load_s3diff_checkpoint(root / "s3diff.pkl")

    root = make_weights_dir(tmp_path / "de")
    state = torch.load(root / "de_net.pth", weights_only=True)
    state.pop("body.1.8.conv2.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, root / "de_net.pth")
    with pytest.raises(UserError, match="lacks body.1.8.conv2.bias.*de_net.pth"):
        S3Diff.from_pretrained(root)


class _Payload:
    """Pickles to a call of os.mkdir: loading it with plain pickle would create a folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.model
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", ["s3diff.pkl", "de_net.pth"])
def test_pickle_that_runs_code_is_refused(tmp_path, name):
    from workers.s3diff.model import S3Diff

    root = make_weights_dir(tmp_path)
    marker = tmp_path / "payload_ran"
    torch.save({"w": _Payload(marker)}, root / name)  # pickle protocol 2, as torch writes
    with pytest.raises(pickle.UnpicklingError):  # what plain torch.load does here
        torch.load(root / name, weights_only=True)
    with pytest.raises(UserError, match="refusing to load .*run pickled code") as err:
        S3Diff.from_pretrained(root)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    with open(root / name, "wb") as f:  # newest pickle protocol, as plain pickle writes
        pickle.dump({"w": _Payload(marker)}, f, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(UserError, match=name):
        S3Diff.from_pretrained(root)
    assert not marker.exists()


@pytest.mark.model
def test_damaged_file_is_reported(tmp_path):
    from workers.s3diff.checkpoint import load_s3diff_checkpoint

    root = make_weights_dir(tmp_path)
    (root / "s3diff.pkl").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="cannot read .* damaged, not a torch checkpoint"):
        load_s3diff_checkpoint(root / "s3diff.pkl")


def _tiny_clip(sd_turbo: Path, hidden: int) -> None:
    """A random CLIP text encoder and a character-level CLIP tokenizer, in the layout of
    sd-turbo/{text_encoder,tokenizer} (vocab.json + merges.txt, no tokenizer.json)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    chars = list(string.ascii_lowercase + string.digits + ",.-!")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tok = sd_turbo / "tokenizer"
    tok.mkdir()
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "pad_token": "!",
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["!"],
    )
    CLIPTextModel(config).save_pretrained(str(sd_turbo / "text_encoder"))


@pytest.mark.model
def test_prompt_embeds_from_text_encoder_then_safetensors_only(tmp_path):
    """No prompt_embeds.safetensors: computed once from sd-turbo's text encoder, written,
    and used from then on. Also: a directory holding only safetensors loads and runs."""
    from transformers import AutoTokenizer, CLIPTextModel

    from workers.s3diff.check import check_weights
    from workers.s3diff.checkpoint import convert_to_safetensors
    from workers.s3diff.locations import WeightsPaths
    from workers.s3diff.model import S3Diff
    from workers.s3diff.prompts import NEGATIVE_PROMPT, POSITIVE_PROMPT, load_prompt_embeds

    root = make_weights_dir(tmp_path, prompt_embeds=False)
    paths = WeightsPaths(root)
    with pytest.raises(UserError, match="text_encoder.*stabilityai/sd-turbo"):
        load_prompt_embeds(paths)
    _tiny_clip(root / "sd-turbo", hidden=32)
    assert check_weights(root) == []
    positive, negative = load_prompt_embeds(paths)
    assert paths.prompt_embeds.is_file()

    tokenizer = AutoTokenizer.from_pretrained(str(paths.tokenizer))
    encoder = CLIPTextModel.from_pretrained(str(paths.text_encoder))
    with torch.no_grad():
        for prompt, got in ((POSITIVE_PROMPT, positive), (NEGATIVE_PROMPT, negative)):
            ids = tokenizer(
                prompt, max_length=77, padding="max_length", truncation=True, return_tensors="pt"
            ).input_ids
            assert got.shape == (1, 77, 32)
            assert torch.equal(got, encoder(ids)[0])
    assert not torch.equal(positive, negative)

    shutil.rmtree(paths.text_encoder)  # the cached file is enough from now on
    shutil.rmtree(paths.tokenizer)
    written = convert_to_safetensors(root)
    assert {p.name for p in written} == {"s3diff.safetensors", "de_net.safetensors"}
    (root / "s3diff.pkl").unlink()
    (root / "de_net.pth").unlink()
    assert paths.s3diff.name == "s3diff.safetensors" and check_weights(root) == []

    reference = S3Diff.from_pretrained(WEIGHTS)
    model = S3Diff.from_pretrained(root)
    assert torch.equal(model.prompt_embeds[0], positive[0])
    for (name, a), b in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        if "prompt_embeds" not in name:
            assert torch.equal(a, b), name


@pytest.mark.model
def test_bad_weights_are_refused_before_a_local_ray_starts(tmp_path, monkeypatch):
    """A local run checks the weights in this process, before Ray would start."""
    import numpy as np
    from PIL import Image

    import pipeline.job.launch as run
    from pipeline.config import load_config

    def no_ray(address):
        raise AssertionError("Ray was started before the weights check")

    monkeypatch.setattr(run, "ray_runtime", no_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    src = tmp_path / "in.png"
    Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(src)
    root = make_weights_dir(tmp_path)
    (root / "de_net.pth").unlink()
    cfg = load_config(set_items=["model.name=s3diff", f"model.weights={root}"])
    with pytest.raises(UserError, match="S3Diff weights are not usable: .*de_net"):
        run.run_job(str(src), str(tmp_path / "out.png"), cfg, progress=False)


@pytest.mark.unit
def test_hub_cache_is_the_last_place_looked(tmp_path, monkeypatch):
    """Without a directory, the Hugging Face cache's two snapshots are used in place."""
    from workers.s3diff.locations import find_weights, resolve_weights

    monkeypatch.delenv("S3DIFF_WEIGHTS", raising=False)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert find_weights(None) is None
    snapshots = {}
    for repo in ("stabilityai/sd-turbo", "zhangap/S3Diff"):
        folder = tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text("c0ffee")
        snapshots[repo] = folder / "snapshots" / "c0ffee"
        snapshots[repo].mkdir(parents=True)
    paths = resolve_weights(None)
    assert paths.root == snapshots["zhangap/S3Diff"]
    assert paths.unet == snapshots["stabilityai/sd-turbo"] / "unet"
    assert paths.prompt_embeds == tmp_path / "cache" / "s3diff-sr" / "prompt_embeds.safetensors"
    assert find_weights(None) is None  # no checkpoint in the snapshot yet
    (snapshots["zhangap/S3Diff"] / "s3diff.pkl").write_bytes(b"")
    assert find_weights(None) == str(snapshots["zhangap/S3Diff"])
