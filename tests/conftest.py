"""Shared fixtures (one local Ray with two logical GPUs, test images) and the test tiers.

Every test carries exactly one tier marker, ``unit``, ``model`` or ``integration``
(pyproject.toml says what each means), and ``gpu`` on top where it needs CUDA.
Collection fails for a test without a tier, with two, with ``unit`` and ``gpu``, or with
``unit`` and the ``ray_local`` fixture. While a ``unit`` test runs (the setup of its
fixtures, then the test), starting a subprocess, calling ``ray.init`` or connecting a
socket raises ``UnitTierViolation``; one the code under test catches still fails it.
This guards the tier; it stands in for none of the components under test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# helpers.py asserts on behalf of the tests (assert_one_line_error): rewritten like a
# test module, so a failure shows the values. Registered before its first import.
pytest.register_assert_rewrite("tests.helpers")

# ------------------------------------------------------------------- a fresh user
# The suite runs as a user who has never run anything here (DESIGN 6.12): HOME and every
# cache and config folder the code or its libraries read (S3Diff weights lookup, the
# Hugging Face cache, matplotlib's font cache, torch hub, XDG folders) point at empty
# folders made for this session, and variables that would steer them are dropped. What a
# first run on a new machine does (build a font cache, find no weights), every run does;
# a test that needs a cache or weights makes them itself. Set before anything imports
# the libraries that read them. Ray's session folders follow TMPDIR (.ci/run sets it).
FRESH_HOME = Path(tempfile.mkdtemp(prefix="sr-tests-home-"))
for _name in [k for k in os.environ if k.startswith(("HF_", "HUGGINGFACE_", "S3DIFF_"))] + [
    "TRANSFORMERS_CACHE",
    "RAY_ADDRESS",  # ray.init() would join whatever cluster it names
]:
    os.environ.pop(_name, None)
os.environ.update(
    HOME=str(FRESH_HOME),
    XDG_CACHE_HOME=str(FRESH_HOME / ".cache"),
    XDG_CONFIG_HOME=str(FRESH_HOME / ".config"),
    XDG_DATA_HOME=str(FRESH_HOME / ".local" / "share"),
    MPLCONFIGDIR=str(FRESH_HOME / ".config" / "matplotlib"),
    TORCH_HOME=str(FRESH_HOME / ".cache" / "torch"),
)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every Ray of the test session (local, multi-node, the job server) on loopback only:
# read when ray is first imported, so before that. Joining 127.0.0.1 would otherwise
# be resolved to the machine's routable address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from tests.helpers import LOCAL_RAY, synth_image  # noqa: E402

TIERS = ("unit", "model", "integration")  # exactly one per test; "gpu" may come on top


# ------------------------------------------------------------------------------ tiers
@pytest.hookimpl(tryfirst=True)  # before -m/-k deselect: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = []
    for item in items:
        tiers = [t for t in TIERS if item.get_closest_marker(t)]
        if len(tiers) != 1:
            found = ", ".join(tiers) or "none"
            problems.append(f"{item.nodeid}: tier markers {found}; give exactly one")
        elif tiers == ["unit"] and item.get_closest_marker("gpu"):
            problems.append(f"{item.nodeid}: marked unit and gpu; a CUDA test is not unit")
        elif tiers == ["unit"] and "ray_local" in getattr(item, "fixturenames", ()):
            problems.append(f"{item.nodeid}: marked unit but uses ray_local; mark it integration")
    if problems:
        raise pytest.UsageError(
            "tests without one true tier marker (unit, model, integration; see the markers "
            "in pyproject.toml):\n  " + "\n  ".join(problems)
        )
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not _cuda_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


def _cuda_available() -> bool:
    import torch  # only when gpu tests were collected; their modules import it anyway

    return torch.cuda.is_available()


class UnitTierViolation(RuntimeError):
    """A test marked ``unit`` reached for a process, Ray or the network."""


@contextlib.contextmanager
def _unit_guard(item: pytest.Item) -> Iterator[list[str]]:
    """Refuse subprocesses, ``ray.init`` and socket connections; yields the messages of
    the refusals (also those the code under test caught)."""
    refused: list[str] = []

    def refuse(what: str):
        def guard(*args, **kwargs):
            message = (
                f"{item.nodeid} is marked unit but {what}; a unit test runs no "
                "subprocess, no Ray and no network: mark it integration (or model)"
            )
            refused.append(message)
            raise UnitTierViolation(message)

        return guard

    import _posixsubprocess

    ray = sys.modules.get("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "__init__", refuse("started a subprocess"))
        mp.setattr(_posixsubprocess, "fork_exec", refuse("started a subprocess"))
        for name in ("system", "fork", "forkpty", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                mp.setattr(os, name, refuse(f"called os.{name}"))
        mp.setattr(socket.socket, "connect", refuse("opened a socket connection"))
        mp.setattr(socket.socket, "connect_ex", refuse("opened a socket connection"))
        if ray is not None:
            mp.setattr(ray, "init", refuse("called ray.init"))
        yield refused
    if ray is None and "ray" in sys.modules and sys.modules["ray"].is_initialized():
        refused.append(f"{item.nodeid} is marked unit but started Ray")  # imported it here
        sys.modules["ray"].shutdown()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    return (yield from _guarded(item))


def _guarded(item: pytest.Item):
    """The body of a runtest wrapper: the phase (fixtures set up for this test, or the
    test itself) runs under the unit guard if the test is marked unit."""
    if item.get_closest_marker("unit") is None:
        return (yield)
    with _unit_guard(item) as refused:
        result = yield
    if refused:
        pytest.fail(refused[0], pytrace=False)
    return result


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(FRESH_HOME, ignore_errors=True)


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


@pytest.fixture
def one_torch_thread():
    """Tensors this small run fastest on one thread (on a busy machine torch's extra
    threads cost 30x)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
