"""Shared fixtures: one local Ray with two logical GPUs, test images, config helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import synth_image

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """Real local Ray; 2 logical GPUs so GPU actors (num_cpus=0) are scheduled as on a
    GPU machine while torch runs on the CPU."""
    import ray

    ray.init(
        address="local",  # never join another Ray running on this machine
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="ERROR",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def png_rgb(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "in.png"
    Image.fromarray(synth_image(150, 200)).save(path)
    return path
