"""``weights download`` against a local hub (tests/hub_server.py) and from the cache.

The hub serves the golden weights to the real ``huggingface_hub`` client (HF_ENDPOINT):
``stabilityai/sd-turbo`` as the tiny SD-Turbo (unet/, vae/, scheduler/; no text
encoder) and ``zhangap/S3Diff`` as the official-format ``s3diff.pkl`` and ``de_net.pth``.
The tiny repository has no text encoder, so each test puts the golden prompt embeddings
where the download caches them; the download then does not ask for the text encoder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, run_cli
from tests.hub_server import repo_files, serve_hub

pytestmark = pytest.mark.integration

WEIGHTS = Path(__file__).parent / "data" / "golden" / "weights"
REPOS = {
    "stabilityai/sd-turbo": repo_files(WEIGHTS / "sd-turbo"),
    "zhangap/S3Diff": {n: WEIGHTS / n for n in ("s3diff.pkl", "de_net.pth")},
}


def hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "S3DIFF_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"), **extra)
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    return env


def downloaded(requests: list[str]) -> set[str]:
    """'/{repo}/{path}' of every file GET in the hub's request log."""
    out = set()
    for line in requests:
        method, _, url = line.partition(" ")
        if method == "GET" and "/resolve/" in url:
            repo, _, rest = url.partition("/resolve/")
            out.add(repo + "/" + rest.partition("/")[2])
    return out


def seed_embeds(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(WEIGHTS / "prompt_embeds.safetensors", path)


def test_download_into_the_hub_cache_then_offline(tmp_path):
    seed_embeds(tmp_path / "cache" / "s3diff-sr" / "prompt_embeds.safetensors")
    with serve_hub(REPOS) as (endpoint, requests):
        env = hub_env(tmp_path, HF_ENDPOINT=endpoint)
        result = run_cli("weights", "download", env=env)
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert "ok:" in result.stdout
        fetched = downloaded(requests)
        assert fetched == {"/stabilityai/sd-turbo/" + p for p in REPOS["stabilityai/sd-turbo"]} | {
            "/zhangap/S3Diff/s3diff.pkl",
            "/zhangap/S3Diff/de_net.pth",
        }, fetched
        # No second copy: the snapshots are the cache itself.
        hub = tmp_path / "hf" / "hub"
        assert (hub / "models--zhangap--S3Diff").is_dir()
        assert not (tmp_path / "cache" / "s3diff-sr" / "weights").exists()
        # Again: nothing is downloaded a second time.
        before = len(requests)
        assert run_cli("weights", "download", env=env).returncode == 0
        assert not downloaded(requests[before:])
    offline = hub_env(tmp_path, HF_HUB_OFFLINE="1")
    result = run_cli("weights", "download", env=offline)
    assert result.returncode == 0, (result.stdout, result.stderr)
    result = run_cli("weights", "check", env=offline)
    assert result.returncode == 0 and "ok:" in result.stdout, (result.stdout, result.stderr)


def test_download_into_a_directory(tmp_path):
    target = tmp_path / "weights"
    seed_embeds(target / "prompt_embeds.safetensors")
    with serve_hub(REPOS) as (endpoint, _):
        env = hub_env(tmp_path, HF_ENDPOINT=endpoint)
        result = run_cli("weights", "download", target, env=env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    for part in (
        "sd-turbo/unet/config.json",
        "sd-turbo/vae/config.json",
        "s3diff.pkl",
        "de_net.pth",
    ):
        assert (target / part).is_file(), part
    result = run_cli("weights", "check", target, env=hub_env(tmp_path))
    assert result.returncode == 0, (result.stdout, result.stderr)


def test_offline_with_nothing_cached_fails_in_one_line(tmp_path):
    result = run_cli("weights", "download", env=hub_env(tmp_path, HF_HUB_OFFLINE="1"))
    assert_one_line_error(result, 2, "stabilityai/sd-turbo is not in")
    assert "on a machine with a network run 'run_pipeline.py weights download'" in result.stderr
