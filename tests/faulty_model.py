"""A test-only Upscaler that fails on purpose, for the reliability tests.

It wraps a real model (bicubic, or the tiny S3Diff) and, as its control file says,
raises on poison input, kills its own worker process, hangs until the test kills it, or
runs out of memory for batches above a size. Poison input is content: a tile holding a
pixel of exactly ``POISON`` (RGB 255, 0, 255); test images keep every other pixel in
1..254, so only the tiles that contain the planted pixel are affected.

The control file is JSON at ``model.weights`` (the faulty models need no weights, and
that path travels to every Ray actor with the config). It is read on every call, so a
test can "fix the model" between two runs of the same job. Keys, all optional:

``inner``          "bicubic" (default) or "s3diff"; ``inner_weights`` for S3Diff
``poison``         "raise" | "exit" | "hang": what a tile with the poison pixel does
``once``           only the first poisoned call misbehaves (a marker file records it)
``oom_above``      batches with more tiles than this raise ``torch.OutOfMemoryError``
``estimate_oom_above``  the same for degradation-estimate calls with more crops
``log``            a file that gets one line per call: ``pid tiles poisoned outcome``

``register(monkeypatch)`` adds the two specs to ``pipeline.models.MODELS`` for one test;
the driver passes the factory to its actors, so they need no registration.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.config import ModelConfig
from pipeline.models import MODELS, ModelSpec

POISON = (255, 0, 255)

SPECS = {
    "faulty": replace(
        MODELS["bicubic"],
        name="faulty",
        factory="tests.faulty_model:FaultyUpscaler",
        description="test only: bicubic with injected faults",
    ),
    "faulty_s3diff": replace(
        MODELS["s3diff"],
        name="faulty_s3diff",
        factory="tests.faulty_model:FaultyUpscaler",
        needs_weights=False,  # model.weights is the control file; inner_weights are checked
        description="test only: tiny S3Diff with injected faults",
    ),
}


def register(monkeypatch) -> dict[str, ModelSpec]:
    for name, spec in SPECS.items():
        monkeypatch.setitem(MODELS, name, spec)
    return SPECS


def write_control(path: Path, **control) -> Path:
    path.write_text(json.dumps(control))
    return path


def plant_poison(image_hwc: np.ndarray, y: int, x: int) -> np.ndarray:
    """A copy with every pixel in 1..254 except the poison pixel at (y, x)."""
    out = np.clip(image_hwc, 1, 254).astype(np.uint8)
    out[y, x] = POISON
    return out


def read_log(path: Path) -> list[tuple[int, int, bool, str]]:
    """(pid, tiles, poisoned, outcome) per model call."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        pid, tiles, poisoned, outcome = line.split()
        rows.append((int(pid), int(tiles), poisoned == "1", outcome))
    return rows


class FaultyUpscaler:
    def __init__(self, config: ModelConfig) -> None:
        self.control_path = Path(config.weights or "")
        control = self._control()
        if control.get("inner", "bicubic") == "s3diff":
            from workers.s3diff.upscaler import S3DiffUpscaler

            inner_cfg = replace(config, name="s3diff", weights=control["inner_weights"])
            self.inner = S3DiffUpscaler(inner_cfg)
        else:
            from workers.upscaler import BicubicUpscaler

            self.inner = BicubicUpscaler(config)
        self.scale = self.inner.scale
        self.device = self.inner.device

    def _control(self) -> dict:
        return json.loads(self.control_path.read_text())

    def _log(self, control: dict, tiles: int, poisoned: bool, outcome: str) -> None:
        if control.get("log"):
            with open(control["log"], "a") as fh:
                fh.write(f"{os.getpid()} {tiles} {int(poisoned)} {outcome}\n")

    def _first_time(self) -> bool:
        marker = self.control_path.with_name(self.control_path.name + ".fired")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def estimate_degradation(self, crops_nchw: torch.Tensor) -> torch.Tensor:
        control = self._control()
        n = crops_nchw.shape[0]
        limit = control.get("estimate_oom_above")
        if limit is not None and n > limit:
            self._log(control, n, False, "estimate_oom")
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected: {n} crops, more than {limit} fit)"
            )
        out = self.inner.estimate_degradation(crops_nchw)
        if limit is not None:
            self._log(control, n, False, "estimate_ok")
        return out

    def upscale(
        self, tiles_nchw: torch.Tensor, conditioning: torch.Tensor | None = None
    ) -> torch.Tensor:
        control = self._control()
        n = tiles_nchw.shape[0]
        rgb = tiles_nchw[:, :3]
        poisoned = bool(((rgb[:, 0] == 1.0) & (rgb[:, 1] == 0.0) & (rgb[:, 2] == 1.0)).any())
        action = control.get("poison") if poisoned else None
        if action and control.get("once") and not self._first_time():
            action = None
        limit = control.get("oom_above")
        if limit is not None and n > limit:
            self._log(control, n, poisoned, "oom")
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected: {n} tiles, more than {limit} fit)"
            )
        if action == "raise":
            self._log(control, n, poisoned, "raise")
            raise ValueError("poison pixel in the input (injected failure)")
        if action == "exit":
            self._log(control, n, poisoned, "exit")
            os._exit(17)
        if action == "hang":
            self._log(control, n, poisoned, "hang")
            pid_file = self.control_path.with_name(self.control_path.name + ".pid")
            pid_file.write_text(str(os.getpid()))
            time.sleep(120)  # the test kills this process long before
        out = self.inner.upscale(tiles_nchw, conditioning)
        self._log(control, n, poisoned, "ok")
        return out
