"""The region worker: a Ray actor that upscales one output region at a time.

It loads its upscaler once, and for each region reads the LR region plus the halo that
the global tiles touching it need, runs those tiles in batches, blends them with their
windows in float32, and writes the region's output shard in one piece. It returns a
small status dict; pixels never travel through Ray. Torch is imported in the actor,
never on the driver.

Out of GPU memory, the worker halves its batch (down to one tile) and redoes that batch;
the smaller batch stays for the actor's life. The degradation estimate does the same
with its batch of crops. A tile that does not fit alone fails the
region with a message saying so: the tile size cannot shrink for one region, because
every region must use the same global tile grid (DESIGN.md section 4) or seams appear
and resumed output would differ. The region then goes through the driver's bounded
retries, and a rerun with a smaller ``--tile`` needs ``--restart``.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

import numpy as np

from pipeline.config import JobConfig, ModelConfig, degradation_mode, parse_value_range
from pipeline.nodata import fill_tiles, invalid_mask, mark_output
from pipeline.placement import current_node
from pipeline.runner.tasks import EstimateTask, JobRef, RegionTask
from pipeline.samples import from_unit, sample_range, to_unit
from pipeline.shots import frame_signature
from pipeline.store import JobStore
from pipeline.tiling import (
    Grid,
    accumulate,
    normalise,
    pad_to_multiple,
    plan_grid,
    region_at,
    tile_window,
    tiles_for_region,
)

log = logging.getLogger(__name__)


class _JobView:
    """One job's store arrays, tile grid and window cache, opened once per worker."""

    def __init__(self, job: JobRef) -> None:
        self.job = job
        self.config = job.config
        self.store = JobStore.open(job.store_url)
        self.layout = self.store.layout
        self.input = self.store.array("input")
        self.output = self.store.array("output")
        self.grid: Grid = plan_grid(
            self.layout.height,
            self.layout.width,
            job.config.tiling.tile_px,
            job.config.tiling.overlap_px,
        )
        self.windows: dict[tuple[int, int], np.ndarray] = {}
        self.degradation = None


class RegionWorker:
    """Wrap with ``ray.remote(...)`` on the driver; usable directly in tests and debugging.

    The model is loaded once, in the constructor; ``process`` serves any job whose
    model config is the one the worker was built with (a batch shares its workers).
    """

    MAX_OPEN_JOBS = 4

    def __init__(
        self,
        model: ModelConfig,
        factory: str | None = None,
        threads: int = 1,
    ) -> None:
        """``factory`` ("module:Class") is the model class the driver resolved from its
        registry; None looks ``model.name`` up in this process's registry."""
        import torch

        from workers.upscaler import build_upscaler

        torch.set_num_threads(max(1, threads))
        self.model_config = model
        if factory is None:
            self.upscaler = build_upscaler(model)
        else:
            module_name, class_name = factory.split(":")
            cls = getattr(importlib.import_module(module_name), class_name)
            self.upscaler = cls(model)
        # Tiles per model call; halved (for the actor's life) when the GPU runs out.
        self.batch_size = max(1, model.batch_size)
        # Degradation-estimate crops per model call (None: a frame's crops at once);
        # halved like ``batch_size`` when the GPU runs out.
        self.estimate_batch: int | None = None
        self._jobs: dict[str, _JobView] = {}
        self._view: _JobView | None = None
        self.node = current_node()  # reported with each region (pipeline/placement)

    def _open(self, job: JobRef) -> _JobView:
        view = self._jobs.get(job.store_url)
        if view is None or view.job != job:
            if len(self._jobs) >= self.MAX_OPEN_JOBS:
                self._jobs.pop(next(iter(self._jobs)))
            view = self._jobs[job.store_url] = _JobView(job)
        return view

    # The current job's state, for the methods below (set by ``process``).
    @property
    def store(self) -> JobStore:
        return self._view.store

    @property
    def layout(self):
        return self._view.layout

    @property
    def input(self):
        return self._view.input

    @property
    def output(self):
        return self._view.output

    @property
    def grid(self) -> Grid:
        return self._view.grid

    @property
    def config(self) -> JobConfig:
        return self._view.config

    @property
    def size_multiple(self) -> int:
        return self._view.job.size_multiple

    @property
    def context_px(self) -> int:
        return self._view.job.context_px

    def _window(self, y: int, x: int) -> np.ndarray:
        g = self.grid
        # Only whether the tile touches each image edge matters, so cache on that.
        key = (
            (y > 0) + 2 * (y + g.tile_h < g.height),
            (x > 0) + 2 * (x + g.tile_w < g.width),
        )
        windows = self._view.windows
        if key not in windows:
            t = self.config.tiling
            windows[key] = tile_window(
                g, y, x, self.layout.scale, t.overlap_px, t.window, self.context_px
            )
        return windows[key]

    def process(self, task: RegionTask | EstimateTask, job: JobRef) -> Any:
        """Upscale one region of ``job`` and write its shard (returns counts and
        timings), or estimate degradation scores (returns them: 2 floats a frame)."""
        try:
            self._view = self._open(job)
            if isinstance(task, EstimateTask):
                scores = self.estimate(task.frames)
                if degradation_mode(job.config.model, self.layout.frames > 1) != "shot":
                    return scores
                return {"scores": scores, "signatures": self.signatures(task.frames)}
            return self._process(task)
        except Exception as exc:
            where = (
                f"frames {task.frames[0]}..{task.frames[-1]} (degradation estimate)"
                if isinstance(task, EstimateTask)
                else f"frame {task.frame} region (row {task.row}, col {task.col})"
            )
            raise RuntimeError(f"{where} failed: {type(exc).__name__}: {exc}") from exc

    def estimate(self, frames: tuple[int, ...]) -> np.ndarray:
        """Mean degradation scores over a fixed set of LR crops of each frame: (n, 2)."""
        import torch

        from workers.s3diff.degradation import plan_degradation_crops

        lay = self.layout
        low, span, _ = self._range()
        corners = plan_degradation_crops(lay.height, lay.width)
        ch, cw = min(128, lay.height), min(128, lay.width)
        out = np.zeros((len(frames), 2), np.float32)
        for i, f in enumerate(frames):
            crops = np.stack([self.input[f, y : y + ch, x : x + cw, :] for y, x in corners])
            crops_t = torch.from_numpy(to_unit(crops, low, span)).clamp_(0.0, 1.0)
            crops_t = crops_t.permute(0, 3, 1, 2)
            # Colour images as RGB; otherwise the first band, as gray.
            crops_t = crops_t[:, :3] if lay.colour else crops_t[:, :1].expand(-1, 3, -1, -1)
            out[i] = self._estimate_frame(crops_t.contiguous(), f)
        return out

    def signatures(self, frames: tuple[int, ...]) -> np.ndarray:
        """(n, K) shot signatures of these LR frames (pipeline/shots.py)."""
        low, span, _ = self._range()
        return np.stack(
            [frame_signature(to_unit(np.asarray(self.input[f]), low, span), 1.0) for f in frames]
        )

    def _estimate_frame(self, crops_nchw, frame: int) -> np.ndarray:
        """The mean scores (2,) of one frame's crops, at most ``estimate_batch`` crops per
        call; out of memory halves that and redoes the frame's remaining crops."""
        total = np.zeros(2, np.float64)
        done = 0
        while done < len(crops_nchw):
            step = self.estimate_batch or len(crops_nchw)
            chunk = crops_nchw[done : done + step]
            scores = self._estimate_or_shrink(chunk, frame)
            if scores is None:
                continue
            total += scores.astype(np.float64) * len(chunk)  # a mean over the chunk
            done += len(chunk)
        return (total / len(crops_nchw)).astype(np.float32)

    def _estimate_or_shrink(self, crops_nchw, frame: int) -> np.ndarray | None:
        """The mean scores of these crops, or None after an out-of-memory error (the
        crop batch is halved; the caller retries the same crops)."""
        scores, message = call_or_oom(lambda: self.upscaler.estimate_degradation(crops_nchw))
        if message is None:
            return scores.numpy()
        if len(crops_nchw) == 1:
            raise OutOfMemory(
                f"out of memory estimating degradation on a single "
                f"{crops_nchw.shape[-2]}x{crops_nchw.shape[-1]} px crop ({message}); "
                "free GPU memory"
            )
        self.estimate_batch = max(1, len(crops_nchw) // 2)
        log.warning(
            "frame %d degradation estimate: out of memory, crop batch now %d",
            frame,
            self.estimate_batch,
        )
        return None

    def _range(self) -> tuple[float, float, bool]:
        text = self.config.model.value_range
        return sample_range(self.layout.dtype, parse_value_range(text) if text else None)

    def _conditioning(self, frame: int):
        """The frame's scores from the store (written by the driver), or None."""
        import torch

        view = self._view
        if "degradation" not in view.store.group:
            return None
        if view.degradation is None:
            view.degradation = view.store.array("degradation")
        scores = np.asarray(view.degradation[frame], np.float32)
        if not np.isfinite(scores).all():
            raise RuntimeError(f"frame {frame} has no degradation scores in the store")
        return torch.from_numpy(scores)

    def _process(self, task: RegionTask) -> dict[str, Any]:
        import torch

        from workers.upscaler import bicubic_upscale

        t_start = time.perf_counter()
        lay, g, s = self.layout, self.grid, self.layout.scale
        region = region_at(task.frame, task.row, task.col, lay.height, lay.width, lay.region_lr_px)
        tiles = tiles_for_region(g, region)
        by0 = min(y for y, _ in tiles)
        bx0 = min(x for _, x in tiles)
        by1 = max(y for y, _ in tiles) + g.tile_h
        bx1 = max(x for _, x in tiles) + g.tile_w
        low, span, bounded = self._range()
        halo = np.asarray(self.input[task.frame, by0:by1, bx0:bx1, :])
        invalid = invalid_mask(halo, lay.nodata)  # no-data samples (pipeline/nodata.py)
        halo_unit = to_unit(halo, low, span)
        if bounded:  # samples outside model.value_range are its black or white
            np.clip(halo_unit, 0.0, 1.0, out=halo_unit)
        halo_t = torch.from_numpy(halo_unit).permute(2, 0, 1)
        invalid_t = None if invalid is None else torch.from_numpy(invalid).permute(2, 0, 1)

        oy0, ox0 = region.y0 * s, region.x0 * s
        oh, ow = (region.y1 - region.y0) * s, (region.x1 - region.x0) * s
        acc = np.zeros((lay.channels, oh, ow), np.float32)
        wsum = np.zeros((oh, ow), np.float32)
        # Image channels go through the model as one RGB image, or one gray image each
        # (independent bands); an alpha channel, only where the file said so, by bicubic.
        n_image = lay.channels - lay.alpha
        per_tile = 1 if lay.colour else n_image
        ph = pad_to_multiple(g.tile_h, self.size_multiple)
        pw = pad_to_multiple(g.tile_w, self.size_multiple)
        conditioning = self._conditioning(task.frame)
        model_s = 0.0
        b0 = 0
        while b0 < len(tiles):
            coords = tiles[b0 : b0 + max(1, self.batch_size // per_tile)]
            lr = torch.stack(
                [
                    halo_t[:, y - by0 : y - by0 + g.tile_h, x - bx0 : x - bx0 + g.tile_w]
                    for y, x in coords
                ]
            )
            if invalid_t is not None:  # filled from their neighbours, tile by tile
                holes = torch.stack(
                    [
                        invalid_t[:, y - by0 : y - by0 + g.tile_h, x - bx0 : x - bx0 + g.tile_w]
                        for y, x in coords
                    ]
                )
                lr = torch.from_numpy(fill_tiles(lr.numpy(), holes.numpy()))
            images = model_inputs(lr[:, :n_image], lay.colour)
            if (ph, pw) != (g.tile_h, g.tile_w):
                images = _pad(images, ph, pw)
            t0 = time.perf_counter()
            sr = self._run_model(images, conditioning, task)
            model_s += time.perf_counter() - t0
            if sr is None:
                continue  # out of memory: the same tiles again, in a smaller batch
            b0 += len(coords)
            sr = sr[:, :, : g.tile_h * s, : g.tile_w * s].float().cpu()
            sr = model_outputs(sr, len(coords), n_image, lay.colour)
            if lay.alpha:
                sr = torch.cat([sr, bicubic_upscale(lr[:, -1:], s)], dim=1)
            sr_np = sr.numpy()
            for (y, x), tile in zip(coords, sr_np, strict=True):
                accumulate(acc, wsum, tile, self._window(y, x), (y * s, x * s), (oy0, ox0))
        out = from_unit(normalise(acc, wsum), lay.dtype, low, span, bounded)
        if invalid is not None:  # no data stays no data, pixel for pixel at output scale
            ry, rx = region.y0 - by0, region.x0 - bx0
            rows = slice(ry, ry + region.y1 - region.y0)
            cols = slice(rx, rx + region.x1 - region.x0)
            mark_output(out, halo[rows, cols], invalid[rows, cols], s)
        self._drop_shard(task)
        self.output[task.frame, oy0 : oy0 + oh, ox0 : ox0 + ow, :] = np.moveaxis(out, 0, -1)
        return {
            "frame": task.frame,
            "row": task.row,
            "col": task.col,
            "tiles": len(tiles),
            "batch_size": self.batch_size,
            "out_px": oh * ow,
            "model_s": model_s,
            "total_s": time.perf_counter() - t_start,
            "node": self.node,
        }

    def _drop_shard(self, task: RegionTask) -> None:
        """Delete the region's shard before writing it. The region owns the whole shard,
        but zarr merges a write into the shard it finds: a shard left torn by an
        interrupted attempt (a store without atomic writes) would fail every retry, and
        an intact one would be read for nothing."""
        from zarr.core.sync import sync

        path = self.output.store_path
        key = self.output.metadata.encode_chunk_key((task.frame, task.row, task.col, 0))
        sync(path.store.delete(f"{path.path}/{key}" if path.path else key))

    def _run_model(self, images_nchw, conditioning, task: RegionTask):
        """The model's output for these images, at most ``batch_size`` per call (a tile
        of many bands is many images), or None after running out of memory."""
        import torch

        outs = []
        for i in range(0, len(images_nchw), self.batch_size):
            out = self._upscale_or_shrink(
                images_nchw[i : i + self.batch_size].contiguous(), conditioning, task
            )
            if out is None:
                return None
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _upscale_or_shrink(self, tiles_nchw, conditioning, task: RegionTask):
        """The model's output for these tiles, or None after an out-of-memory error
        (the batch size is halved; the caller retries the same tiles)."""
        out, message = call_or_oom(lambda: self.upscaler.upscale(tiles_nchw, conditioning))
        if message is None:
            return out
        if self.batch_size == 1:
            raise OutOfMemory(
                f"out of memory with a single {self.grid.tile_h}x{self.grid.tile_w} px tile "
                f"({message}); free GPU memory, or lower --tile and rerun with --restart "
                "(the tile grid is global, so it cannot shrink for one region)"
            )
        self.batch_size //= 2
        log.warning(
            "frame %d region (row %d, col %d): out of memory, batch size now %d",
            task.frame,
            task.row,
            task.col,
            self.batch_size,
        )
        return None


def call_or_oom(fn) -> tuple[Any, str | None]:
    """(fn()'s result, None) under inference mode, or (None, the error's first line)
    when it ran out of memory, with the device's cached memory freed."""
    import torch

    try:
        with torch.inference_mode():
            return fn(), None
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # Outside the except block, so the failed call's tensors can be freed.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None, message


def model_inputs(image_nchw, colour: bool):
    """(N, C, h, w) image channels -> the model's (M, 3, h, w): the RGB tiles as they
    are (``colour``), else every channel of every tile as its own gray image (M = N*C)."""
    if colour:
        return image_nchw
    n, c, h, w = image_nchw.shape
    return image_nchw.reshape(n * c, 1, h, w).expand(-1, 3, -1, -1)


def model_outputs(sr_m3hw, tiles: int, channels: int, colour: bool):
    """The model's (M, 3, H, W) back to (tiles, channels, H, W): gray images are the
    mean of the model's three outputs."""
    if colour:
        return sr_m3hw
    _, _, h, w = sr_m3hw.shape
    return sr_m3hw.mean(dim=1).reshape(tiles, channels, h, w)


class OutOfMemory(RuntimeError):
    """A single tile does not fit in the device's memory."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _pad(x, height: int, width: int):
    """Reflect-pad right/bottom to (height, width); replicate where reflect cannot reach."""
    import torch.nn.functional as F

    dh, dw = height - x.shape[-2], width - x.shape[-1]
    mode = "reflect" if dh < x.shape[-2] and dw < x.shape[-1] else "replicate"
    return F.pad(x, (0, dw, 0, dh), mode=mode)
