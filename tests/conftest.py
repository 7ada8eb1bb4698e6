"""Shared fixtures: one local Ray with two logical GPUs, test images, config helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# helpers.py asserts on behalf of the tests (assert_one_line_error): rewritten like a
# test module, so a failure shows the values. Registered before its first import.
pytest.register_assert_rewrite("tests.helpers")

from tests.helpers import LOCAL_RAY, synth_image  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every Ray of the test session (local, multi-node, the job server) on loopback only:
# read when ray is first imported, so before that. Joining 127.0.0.1 would otherwise
# be resolved to the machine's routable address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def ray_local():
    """Real local Ray; 2 logical GPUs so GPU actors (num_cpus=0) are scheduled as on a
    GPU machine while torch runs on the CPU."""
    import ray

    ray.init(**LOCAL_RAY)
    yield ray
    ray.shutdown()


@pytest.fixture
def png_rgb(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "in.png"
    Image.fromarray(synth_image(150, 200)).save(path)
    return path
