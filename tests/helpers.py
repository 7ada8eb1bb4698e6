"""Helpers shared by the tests: the CLI as a user runs it, synthetic images, the bicubic
reference, configs."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "run_pipeline.py"

# The test session's local Ray (conftest's ray_local): 2 logical GPUs so GPU actors
# (num_cpus=0) are scheduled as on a GPU machine while torch runs on the CPU. Tests
# that need another Ray (a multi-node cluster) shut it down and start it again.
LOCAL_RAY = dict(
    address="local",  # a new instance, even if `ray start` left one on this machine
    num_cpus=2,
    num_gpus=2,
    include_dashboard=False,
    _node_ip_address="127.0.0.1",
    logging_level="ERROR",
    log_to_driver=False,
)


def cli_argv(*args: object) -> list[str]:
    """The command line of ``run_pipeline.py`` with ``args`` (paths and numbers as text),
    run by this test session's interpreter."""
    return [sys.executable, str(CLI), *map(str, args)]


# Extra CLI arguments for the in-process runner (``run.runner=local``), for the runs of a
# test whose subject is the store and the job graph rather than Ray: starting and
# stopping a private Ray costs a CLI run about 10 s on 2 cores. Each behaviour that
# depends on Ray keeps a run on Ray.
LOCAL_RUNNER = ("--set", "run.runner=local")


def run_cli(
    *args: object,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to the end in a subprocess; stdout and stderr captured as text.
    ``env=None`` inherits this process's environment (as monkeypatched by the test)."""
    return subprocess.run(
        cli_argv(*args), capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def launch_cli(
    *args: object,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """Start the CLI in a subprocess and return at once (to signal or kill it mid-run);
    its pipes are text. The caller waits for it."""
    return subprocess.Popen(
        cli_argv(*args), stdout=stdout, stderr=stderr, text=True, cwd=cwd, env=env
    )


def main_cli(*args: object) -> subprocess.CompletedProcess[str]:
    """Run the CLI's ``main(argv)`` in this process, as ``run_cli`` runs it in a
    subprocess: the exit code, and stdout and stderr as text (the CLI's own log handler
    writes its messages to that stderr, as in a fresh process). For the checks whose
    subject is what the CLI decides and prints (plan-time refusals, reports, the
    in-process runner): a subprocess costs an interpreter start and, with Ray, a private
    Ray. The process-wide state ``main`` sets (logging, ``--quiet``'s warning filters and
    environment, the SIGTERM/SIGINT handlers) is put back afterwards. An exception that
    escapes ``main`` (where a subprocess would print a traceback) fails the test."""
    from pipeline.cli.main import main
    from pipeline.runner import stopping
    from pipeline.runner.quiet import LIBRARY_LOGGERS, QUIET_ENV

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved_root = root.handlers[:], root.level
    names = ("ray", "filelock", "urllib3", *LIBRARY_LOGGERS)
    saved_levels = {name: logging.getLogger(name).level for name in names}
    saved_env = os.environ.get(QUIET_ENV)
    saved_signals = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    installed = len(stopping._installed)
    root.handlers = []  # so that the CLI's logging.basicConfig installs its handler
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            with contextlib.redirect_stderr(err):
                code = main(argv)
    finally:
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        logging.captureWarnings(False)
        if saved_env is None:
            os.environ.pop(QUIET_ENV, None)
        else:
            os.environ[QUIET_ENV] = saved_env
        signal.signal(signal.SIGTERM, saved_signals[0])
        signal.signal(signal.SIGINT, saved_signals[1])
        del stopping._installed[installed:]
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, text: str) -> None:
    """The CLI failed with ``code`` and a last stderr line ``error: ...`` holding ``text``,
    without a traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and text in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def synth_image(height: int, width: int, channels: int = 3, dtype=np.uint8, seed: int = 0):
    """Smooth structure plus noise: exercises both blending and the bicubic kernel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.5 + 0.25 * np.sin(x / 7.0)[..., None] * np.cos(y / 11.0)[..., None]
    img = base + rng.normal(0, 0.15, (height, width, channels))
    maxval = np.iinfo(dtype).max
    return np.rint(np.clip(img, 0, 1) * maxval).astype(dtype)


def bicubic_reference(image_hwc: np.ndarray, scale: int) -> np.ndarray:
    """Whole-image torch bicubic, clamped and quantised like the pipeline's output."""
    import torch
    import torch.nn.functional as F

    maxval = float(np.iinfo(image_hwc.dtype).max)
    t = torch.from_numpy(image_hwc.astype(np.float32) / maxval).permute(2, 0, 1)[None]
    up = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    return np.rint(up[0].permute(1, 2, 0).numpy() * maxval).astype(image_hwc.dtype)


def make_config(
    scale=2,
    tile=64,
    overlap=16,
    region_out_px=2048,
    chunk_out_px=None,
    actors=0,
    keep=False,
    batch_size=4,
    window="gaussian",
    **extra,
):
    from pipeline.config import load_config

    chunk = chunk_out_px or min(512, region_out_px)
    items = [
        f"model.scale={scale}",
        f"tiling.tile_px={tile}",
        f"tiling.overlap_px={overlap}",
        f"store.region_out_px={region_out_px}",
        f"store.chunk_out_px={chunk}",
        f"run.actors={actors}",
        f"store.keep={str(keep).lower()}",
        f"model.batch_size={batch_size}",
        f"tiling.window={window}",
    ] + [f"{k.replace('__', '.')}={v}" for k, v in extra.items()]
    return load_config(set_items=items)
