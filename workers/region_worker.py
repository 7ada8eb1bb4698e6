"""The region worker: a Ray actor that upscales one output region at a time, and
estimates the degradation scores of frames.

It is a shell around the pure region compute (``workers/region.py``: an LR halo, the
global tile grid and an upscale callable in, the region's output samples out): it loads
its upscaler once, reads the region's halo from the job store, gives the compute its
model (with the frame's conditioning and the out-of-memory back-off), writes the
region's output shard in one piece and returns a small status dict; pixels never travel
through Ray. Torch is imported in the actor, never on the driver.

Two entry points, one per stage: ``estimate(task, job)`` returns the frames' scores (and
their shot signatures when ``job.signatures``) as :class:`Estimates`; ``upscale(task,
job)`` does a region's three steps in turn (the in-process runner calls it). Under Ray an
upscale is two calls on the same actor, so the model is called back to back: ``compute``
(the actor's default, sequential thread: the model and the blend) and ``io`` (the ``io``
thread group: read the halo, then wait for ``compute`` and write the shard, and return
the region's status). With two regions in flight on an actor, the next region's halo is
read and the previous region's shard written while the model runs: at most one region
each way. The results are the same byte for byte.

A failure raises its plain cause: the driver names the frame and region (or frames) from
the call's address (``pipeline.regions.graph.region_failed``).

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
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config import ModelConfig, parse_value_range
from pipeline.pure.shots import frame_signature
from pipeline.pure.tiling import Region, halo_box, plan_grid, region_at
from pipeline.pure.value_range import sample_range, to_unit
from pipeline.runner.placement import current_node
from pipeline.runner.tasks import Estimates, EstimateTask, JobRef, RegionTask
from pipeline.store.jobstore import JobStore

log = logging.getLogger(__name__)

# How long ``compute`` waits for its region's halo from ``io`` (both are sent together,
# so only a lost call could make it wait this long).
HALO_WAIT_S = 600.0


class _JobView:
    """One job's store arrays and region spec, opened once per worker, with its blend
    windows on the worker's device."""

    def __init__(self, job: JobRef, device: Any) -> None:
        from workers.region import RegionSpec, Samples, Windows  # torch: in the worker

        self.job = job
        self.store = JobStore.open(job.store_url)
        self.layout = lay = self.store.layout
        self.input = self.store.array("input")
        self.output = self.store.array("output")
        self.degradation = None
        text = job.config.model.value_range
        self.range = sample_range(lay.dtype, parse_value_range(text) if text else None)
        tiling = job.config.tiling
        self.spec = RegionSpec(
            grid=plan_grid(lay.height, lay.width, tiling.tile_px, tiling.overlap_px),
            scale=lay.scale,
            samples=Samples(lay.channels, lay.alpha, lay.colour, lay.dtype, *self.range),
            overlap_px=tiling.overlap_px,
            window=tiling.window,
            context_px=job.context_px,
            size_multiple=job.size_multiple,
            nodata=lay.nodata,
        )
        self.windows = Windows(self.spec, device)

    def region(self, task: RegionTask) -> Region:
        lay = self.layout
        return region_at(task.frame, task.row, task.col, lay.height, lay.width, lay.region_lr_px)

    def read_halo(self, task: RegionTask) -> _Halo:
        """The LR pixels every tile touching the region needs."""
        region = self.region(task)
        y0, x0, y1, x1 = halo_box(self.spec.grid, region)
        return _Halo(region, np.asarray(self.input[task.frame, y0:y1, x0:x1, :]))

    def write(self, task: RegionTask, region: Region, out_hwc: np.ndarray) -> None:
        """The region's output shard, whole (after deleting whatever shard was there)."""
        from zarr.core.sync import sync

        s = self.layout.scale
        oy0, ox0 = region.y0 * s, region.x0 * s
        # The region owns the whole shard, but zarr merges a write into the shard it
        # finds: a shard left torn by an interrupted attempt (a store without atomic
        # writes) would fail every retry, and an intact one would be read for nothing.
        path = self.output.store_path
        key = self.output.metadata.encode_chunk_key((task.frame, task.row, task.col, 0))
        sync(path.store.delete(f"{path.path}/{key}" if path.path else key))
        h, w = out_hwc.shape[:2]
        self.output[task.frame, oy0 : oy0 + h, ox0 : ox0 + w, :] = out_hwc


class _Buffers:
    """Float32 accumulators for regions, reused: a fresh 4K one costs more to allocate
    (the pages are touched for the first time) than to zero. As many exist as regions are
    between ``compute`` and ``io``'s finish (at most the calls in flight)."""

    def __init__(self) -> None:
        self._free: list[Any] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], device) -> Any:
        import torch

        with self._lock:
            for i, buf in enumerate(self._free):
                if tuple(buf.shape) == shape and buf.device == torch.device(device):
                    return self._free.pop(i)
        return torch.empty(shape, dtype=torch.float32, device=device)

    def give(self, buf: Any) -> None:
        with self._lock:
            self._free.append(buf)
            del self._free[:-2]  # as many as regions in flight; edge shapes come and go


@dataclass
class _Halo:
    region: Region
    pixels_hwc: np.ndarray  # the LR box ``halo_box(grid, region)``


@dataclass
class _Slot:
    """Where a region's ``io`` and ``compute`` calls meet (Ray only)."""

    halo: _Halo | None = None
    blend: Any = None  # workers.region.Blend, once computed
    started: float = field(default_factory=time.time)
    error: BaseException | None = None
    read: threading.Event = field(default_factory=threading.Event)
    computed: threading.Event = field(default_factory=threading.Event)


class RegionWorker:
    """Wrap with ``ray.remote(...)`` on the driver; usable directly in tests and debugging.

    The model is loaded once, in the constructor; the worker serves any job whose model
    config is the one it was built with (a batch shares its workers).
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
        self.device = getattr(self.upscaler, "device", None) or torch.device("cpu")
        # Tiles per model call; halved (for the actor's life) when the GPU runs out.
        self.batch_size = max(1, model.batch_size)
        # Degradation-estimate crops per model call (None: a frame's crops at once);
        # halved like ``batch_size`` when the GPU runs out.
        self.estimate_batch: int | None = None
        self._jobs: dict[str, _JobView] = {}
        self._lock = threading.Lock()  # the io threads open jobs and meet compute too
        self._slots: dict[tuple, _Slot] = {}
        self._buffers = _Buffers()
        self.node = current_node()  # reported with each region (pipeline/runner/placement)
        self.worker = uuid.uuid4().hex[:12]  # reported too: "model busy" is per worker

    def _open(self, job: JobRef) -> _JobView:
        with self._lock:
            view = self._jobs.get(job.store_url)
            if view is None or view.job != job:
                if len(self._jobs) >= self.MAX_OPEN_JOBS:
                    self._jobs.pop(next(iter(self._jobs)))
                view = self._jobs[job.store_url] = _JobView(job, self.device)
            return view

    # ------------------------------------------------------------- estimate
    def estimate(self, task: EstimateTask, job: JobRef) -> Estimates:
        """The degradation scores of ``task.frames`` (and their shot signatures when the
        driver asked for them: ``job.signatures``)."""
        view = self._open(job)
        scores = self._scores(view, task.frames)
        signatures = self._signatures(view, task.frames) if job.signatures else None
        return Estimates(scores, signatures)

    def _scores(self, view: _JobView, frames: tuple[int, ...]) -> np.ndarray:
        """Mean degradation scores over a fixed set of LR crops of each frame: (n, 2)."""
        import torch

        from workers.s3diff.degradation import plan_degradation_crops

        lay = view.layout
        low, span, _ = view.range
        corners = plan_degradation_crops(lay.height, lay.width)
        ch, cw = min(128, lay.height), min(128, lay.width)
        out = np.zeros((len(frames), 2), np.float32)
        for i, f in enumerate(frames):
            crops = np.stack([view.input[f, y : y + ch, x : x + cw, :] for y, x in corners])
            crops_t = torch.from_numpy(to_unit(crops, low, span)).clamp_(0.0, 1.0)
            crops_t = crops_t.permute(0, 3, 1, 2)
            # Colour images as RGB; otherwise the first band, as gray.
            crops_t = crops_t[:, :3] if lay.colour else crops_t[:, :1].expand(-1, 3, -1, -1)
            out[i] = self._estimate_frame(crops_t.contiguous(), f)
        return out

    @staticmethod
    def _signatures(view: _JobView, frames: tuple[int, ...]) -> np.ndarray:
        """(n, K) shot signatures of these LR frames (pipeline/pure/shots.py)."""
        low, span, _ = view.range
        return np.stack(
            [frame_signature(to_unit(np.asarray(view.input[f]), low, span), 1.0) for f in frames]
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

    # -------------------------------------------------------------- upscale
    def upscale(self, task: RegionTask, job: JobRef) -> dict[str, Any]:
        """Upscale one region of ``job`` and write its shard; returns counts and timings.
        The in-process runner's call: halo read, model and blend, shard write in turn."""
        started, t0 = time.time(), time.perf_counter()
        view = self._open(job)
        halo = view.read_halo(task)
        blend = self._blend(view, task, halo)
        view.write(task, halo.region, self._finish(view, halo, blend))
        return self._status(task, blend, view.spec.scale, started, t0)

    def compute(self, task: RegionTask, job: JobRef) -> None:
        """Ray, default thread: the model and the blend of a region whose ``io`` call
        reads the halo, then normalises the blend and writes the shard."""
        slot = self._slot(job, task)
        try:
            view = self._open(job)
            if not slot.read.wait(HALO_WAIT_S):
                raise TimeoutError(f"the halo was not read within {HALO_WAIT_S:.0f} s")
            if slot.error is None:
                assert slot.halo is not None
                slot.blend = self._blend(view, task, slot.halo)
        except BaseException as exc:
            slot.error = slot.error or exc
            raise
        finally:
            slot.computed.set()

    def io(self, task: RegionTask, job: JobRef) -> dict[str, Any]:
        """Ray, ``io`` threads: read the region's halo, wait for ``compute``, finish the
        blend and write the shard; returns the region's status (what ``upscale``
        returns)."""
        slot = self._slot(job, task)
        t0 = time.perf_counter()
        try:
            try:
                view = self._open(job)
                slot.halo = view.read_halo(task)
            except BaseException as exc:
                slot.error = exc
                raise
            finally:
                slot.read.set()
            slot.computed.wait()
            if slot.error is not None:
                raise slot.error
            assert slot.blend is not None and slot.halo is not None
            view.write(task, slot.halo.region, self._finish(view, slot.halo, slot.blend))
            return self._status(task, slot.blend, view.spec.scale, slot.started, t0)
        finally:
            with self._lock:
                self._slots.pop((job.store_url, task), None)

    def _slot(self, job: JobRef, task: RegionTask) -> _Slot:
        with self._lock:
            return self._slots.setdefault((job.store_url, task), _Slot())

    def _status(
        self, task: RegionTask, blend, scale: int, started: float, t0: float
    ) -> dict[str, Any]:
        r, s = blend.region, scale
        return {
            "frame": task.frame,
            "row": task.row,
            "col": task.col,
            "tiles": blend.tiles,
            "batch_size": self.batch_size,
            "out_px": (r.y1 - r.y0) * (r.x1 - r.x0) * s * s,
            "model_s": blend.model_s,
            "total_s": time.perf_counter() - t0,
            "started": started,  # wall clock, for the driver's "model busy" per worker
            "ended": time.time(),
            "node": self.node,
            "worker": self.worker,
        }

    def _conditioning(self, view: _JobView, frame: int):
        """The frame's scores from the store (written by the driver), or None."""
        import torch

        if "degradation" not in view.store.group:
            return None
        if view.degradation is None:
            view.degradation = view.store.array("degradation")
        scores = np.asarray(view.degradation[frame], np.float32)
        if not np.isfinite(scores).all():
            raise RuntimeError(f"frame {frame} has no degradation scores in the store")
        return torch.from_numpy(scores)

    def _blend(self, view: _JobView, task: RegionTask, halo: _Halo):
        """The region's tiles through this worker's model (with its conditioning and
        out-of-memory back-off), weighted and summed into a pooled buffer
        (workers/region.py)."""
        from workers.region import blend_region

        conditioning = self._conditioning(view, task.frame)
        r, s = halo.region, view.spec.scale
        shape = (view.spec.samples.channels, (r.y1 - r.y0) * s, (r.x1 - r.x0) * s)
        tile_hw = (view.spec.grid.tile_h, view.spec.grid.tile_w)
        return blend_region(
            halo.pixels_hwc,
            view.spec,
            r,
            lambda images: self._run_model(images, conditioning, task, tile_hw),
            tiles_per_call=lambda: self.batch_size,
            device=self.device,
            windows=view.windows,
            acc=self._buffers.take(shape, self.device),
        )

    def _finish(self, view: _JobView, halo: _Halo, blend) -> np.ndarray:
        """The blend as the region's output samples on the host; its buffer goes back
        to the pool."""
        from workers.region import finish_region

        try:
            return finish_region(blend, halo.pixels_hwc, view.spec)
        finally:
            self._buffers.give(blend.acc)

    def _run_model(self, images_nchw, conditioning, task: RegionTask, tile_hw: tuple[int, int]):
        """The model's output for these images, at most ``batch_size`` per call (a tile
        of many bands is many images), or None after running out of memory."""
        import torch

        outs = []
        for i in range(0, len(images_nchw), self.batch_size):
            out = self._upscale_or_shrink(
                images_nchw[i : i + self.batch_size].contiguous(), conditioning, task, tile_hw
            )
            if out is None:
                return None
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _upscale_or_shrink(self, tiles_nchw, conditioning, task: RegionTask, tile_hw):
        """The model's output for these tiles, or None after an out-of-memory error
        (the batch size is halved; the caller retries the same tiles)."""
        out, message = call_or_oom(lambda: self.upscaler.upscale(tiles_nchw, conditioning))
        if message is None:
            return out
        if self.batch_size == 1:
            raise OutOfMemory(
                f"out of memory with a single {tile_hw[0]}x{tile_hw[1]} px tile "
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


class OutOfMemory(RuntimeError):
    """A single tile does not fit in the device's memory."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
