"""bench/random_weights.py: official-format weights folders with random weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def random_weights():
    spec = importlib.util.spec_from_file_location(
        "random_weights", ROOT / "bench" / "random_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.model
def test_tiny_random_weights_pass_the_check_and_run(tmp_path):
    from workers.s3diff.check import check_weights
    from workers.s3diff.model import S3Diff

    random_weights().write_random_weights(tmp_path, "tiny")
    assert check_weights(tmp_path) == []
    model = S3Diff.from_pretrained(tmp_path)
    with torch.inference_mode():
        lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        scores = model.estimate_degradation(lr)
    assert scores.shape == (1, 2) and bool(torch.isfinite(scores).all())


@pytest.mark.model
def test_full_size_configs_and_keys_match_the_published_files():
    """On the meta device (nothing allocated): the full-size models' configs are
    SD-Turbo's and their checkpoint keys and shapes are the published s3diff.pkl's."""
    from workers.s3diff.check import _SD_TURBO_CONFIG
    from workers.s3diff.checkpoint import FULLSIZE_KEYS_FILE

    rw = random_weights()
    with torch.device("meta"):
        unet, vae = rw.build_models("full")
    for part, expected in _SD_TURBO_CONFIG.items():
        config = dict((unet if part == "unet" else vae).config)
        for key, value in expected.items():
            assert list(config[key]) == value if isinstance(value, list) else config[key] == value
    published = json.loads(FULLSIZE_KEYS_FILE.read_text())["top_level"]
    shapes = rw.checkpoint_shapes(unet, vae, "full")
    for entry, keys in shapes.items():
        assert keys == {k: s for k, s, _ in published[entry]["keys"]}, entry
    assert set(shapes) == {e for e, info in published.items() if "keys" in info}
    assert rw.RANKS["full"] == (published["rank_unet"]["value"], published["rank_vae"]["value"])
