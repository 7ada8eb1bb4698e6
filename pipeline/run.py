"""Run one job: probe -> ingest -> upscale -> publish, with the job store as the state.

Images run the stages one after the other. Videos run them overlapped: decode segments
land in the store, their frames' regions go to the actor pool as soon as they are in,
and the encoder follows in frame order as frames complete. Running the same job again
resumes it: only regions without a ``done`` flag (and segments not yet ingested) run.

``run_item`` runs one planned job against a shared :class:`RegionPool`; ``run_job`` is
the single-job entry point and ``pipeline.batch`` runs many items over one pool.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline import stopping
from pipeline.cluster import cluster_cpus, ray_runtime
from pipeline.conditioning import Conditioning
from pipeline.config import JobConfig
from pipeline.encode import VideoEncoder
from pipeline.errors import UserError
from pipeline.ingest import ingest_rows_task, plan_bands
from pipeline.placement import cpu_stage_options
from pipeline.plan import Plan, plan_job
from pipeline.progress import Progress
from pipeline.publish import (
    blocks,
    copy_to_ome_task,
    create_ome_zarr,
    create_pyramid_arrays,
    downsample_task,
    pyramid_shapes,
    replace_output,
    temp_name,
    write_small_task,
    write_tiff_task,
)
from pipeline.schedule import LocalRegions, RegionPool, cause, run_tasks, wait_all
from pipeline.storage import as_path, discard, list_prefix
from pipeline.store import JobStore, open_for_job, remove_store
from pipeline.tiling import plan_regions
from pipeline.video import ingest_segment_task
from workers.region_worker import EstimateTask, RegionTask

log = logging.getLogger(__name__)
ESTIMATE_BATCH = 32  # frames per estimate call on the local runner

__all__ = ["Pools", "Summary", "plan_job", "run_item", "run_job"]


class UnreadableInput(UserError):
    """The input passed the probe but its pixels could not be decoded (damaged file)."""


@dataclass(frozen=True)
class Summary:
    output: str
    seconds: float
    out_megapixels: float
    frames: int
    regions_total: int
    regions_run: int
    store_url: str

    def line(self) -> str:
        rate = self.out_megapixels / max(self.seconds, 1e-9)
        resumed = self.regions_total - self.regions_run
        extra = f", {resumed} resumed from the store" if resumed else ""
        frames = f"{self.frames} frames, " if self.frames > 1 else ""
        return (
            f"done in {self.seconds:.1f} s: {frames}{self.out_megapixels:.1f} output "
            f"megapixels ({rate:.1f} MP/s), {self.regions_run}/{self.regions_total} regions "
            f"run{extra} -> {self.output}"
        )


class Pools:
    """Region pools by model config, made on first use and shared by every job of a
    run (a batch loads each model once per actor)."""

    def __init__(self, expected_regions: int) -> None:
        self.expected = expected_regions
        self.pools: dict[str, RegionPool] = {}
        self._lock = threading.Lock()  # batch items ask from their own threads

    @staticmethod
    def key(plan: Plan) -> str:
        return repr((plan.model.factory, plan.config.model, plan.config.run))

    def close_others(self, key: str) -> None:
        """Free the workers (and their GPUs) of every other model's pool."""
        with self._lock:
            others = [self.pools.pop(k) for k in list(self.pools) if k != key]
        for pool in others:
            pool.close()

    def get(self, plan: Plan) -> RegionPool:
        key = self.key(plan)
        with self._lock:
            if key not in self.pools:
                self.pools[key] = RegionPool(
                    plan.config.run, plan.model, plan.config.model, max(1, self.expected)
                )
            return self.pools[key]

    def close(self) -> None:
        with self._lock:
            pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.close()


def log_probe(plan: Plan) -> None:
    info, lay = plan.info, plan.layout
    log.info(
        "probe: %s %dx%d%s, %d channel(s), %s -> %dx%d %s",
        info.kind,
        info.width,
        info.height,
        f", {lay.frames} frames" if plan.is_video else "",
        info.channels,
        info.dtype,
        info.width * lay.scale,
        info.height * lay.scale,
        plan.output_path.suffix.lstrip("."),
    )


def run_job(
    input_path: str,
    output_path: str,
    cfg: JobConfig,
    *,
    overwrite: bool = False,
    restart: bool = False,
    progress: bool = True,
) -> Summary:
    t0 = time.perf_counter()
    plan = plan_job(input_path, output_path, cfg, overwrite)
    log_probe(plan)
    local = plan.config.run.runner == "local"
    with nullcontext() if local else ray_runtime(plan.config.run.address):
        check_weights(plan)
        pools = Pools(plan.layout.frames * int(np.prod(plan.layout.regions)))
        try:
            return run_item(plan, pools, restart=restart, progress=progress, t0=t0)
        finally:
            pools.close()


def run_item(
    plan: Plan,
    pools: Pools,
    *,
    restart: bool = False,
    progress: bool = True,
    t0: float | None = None,
    on_regions: Callable[[int], None] | None = None,
) -> Summary:
    """Run one planned job to its published output (Ray is up, weights checked).

    ``on_regions(n)`` is told of regions done (resumed ones first): a batch's bar."""
    t0 = time.perf_counter() if t0 is None else t0
    lay = plan.layout
    store = open_for_job(plan.store_url, plan.spec, plan.layout, restart)
    drop_store = False
    rows, cols = lay.regions
    total = lay.frames * rows * cols
    try:
        _sweep_partials(plan.output_path)
        todo = _todo_regions(plan, store)
        recorder = Progress(
            plan.store_url,
            plan.input_path,
            str(plan.output_path),
            total,
            total - len(todo),
            lay.frames,
            on_regions,
        )
        try:
            if plan.is_video:
                _run_video(plan, store, todo, pools, progress, recorder)
            else:
                _run_image(plan, store, todo, pools, progress, recorder)
        except stopping.Terminated as exc:
            recorder.finish("terminated", str(exc))
            raise
        except BaseException as exc:
            recorder.finish("failed", cause(exc))
            raise
        recorder.finish("done")
    except UnreadableInput:
        # Nothing worth resuming from a damaged input: leave no store behind.
        drop_store = not plan.config.store.keep and not store.done_mask().any()
        raise
    finally:
        store.unlock()
        if drop_store:
            remove_store(plan.store_url)
    if not plan.config.store.keep:
        remove_store(plan.store_url)
    return Summary(
        output=str(plan.output_path),
        seconds=time.perf_counter() - t0,
        out_megapixels=lay.frames * lay.out_shape[1] * lay.out_shape[2] / 1e6,
        frames=lay.frames,
        regions_total=total,
        regions_run=len(todo),
        store_url=plan.store_url,
    )


def weights_problems_task(weights: str | None) -> list[str]:
    """Runs where the workers run (they need the weights there), before any work."""
    import importlib

    module, _, name = "workers.s3diff.preflight:weights_problems".partition(":")
    return getattr(importlib.import_module(module), name)(weights)


def check_weights(plan: Plan) -> None:
    if not plan.model.needs_weights:
        return
    problems = run_tasks(plan, weights_problems_task, [(plan.config.model.weights,)])[0]
    if problems:
        more = (
            f" (and {len(problems) - 1} more: run_pipeline.py weights check)"
            if len(problems) > 1
            else ""
        )
        raise UserError(f"S3Diff weights are not usable: {problems[0]}{more}")


def _unreadable(plan: Plan, exc: BaseException) -> UnreadableInput:
    return UnreadableInput(
        f"{plan.input_path} could not be decoded: {cause(exc)} (is the file damaged or truncated?)"
    )


def _sweep_partials(final: Path) -> None:
    """Delete this output's temporaries left by killed runs (``publish.temp_name``: the
    pid of a process that no longer exists); a live run's temporary is left alone."""
    import psutil

    head = f".{final.stem}.partial-"
    for name in list_prefix(str(final.parent / head)):
        path = as_path(name)
        if not path.name.endswith(final.suffix):
            continue
        pid = path.name[len(head) : len(path.name) - len(final.suffix)]
        if not pid.isdigit() or int(pid) == os.getpid() or psutil.pid_exists(int(pid)):
            continue
        log.info("removing %s, left by an interrupted run", path)
        discard(path)


def _todo_regions(plan: Plan, store: JobStore) -> list[Any]:

    lay = plan.layout
    done = store.done_mask()
    return [
        RegionTask(r.frame, r.row, r.col)
        for f in range(lay.frames)
        for r in plan_regions(f, lay.height, lay.width, lay.region_lr_px)
        if not done[r.frame, r.row, r.col]
    ]


def _bar(plan: Plan, todo: list[Any], progress: bool) -> tqdm:
    """Regions per second with ETA; videos add the encoder's position as a postfix."""
    total = int(np.prod(plan.layout.regions)) * plan.layout.frames
    return tqdm(
        total=total,
        initial=total - len(todo),
        unit="region",
        dynamic_ncols=True,
        desc="upscale",
        disable=not progress,
    )


# ------------------------------------------------------------------------------ images
def _run_image(
    plan: Plan, store: JobStore, todo: list[Any], pools: Pools, progress: bool, rec: Progress
) -> None:
    if not store.state.get("ingested"):
        rec.stage("ingest")
        chunk_rows = store.array("input").chunks[1]
        bands = plan_bands(plan.info, chunk_rows, int(cluster_cpus()) * 2)
        log.info("ingest: %d band(s) into %s", len(bands), plan.store_url)
        try:
            run_tasks(plan, ingest_rows_task, [(plan.info, plan.store_url, a, b) for a, b in bands])
        except stopping.Terminated:
            raise
        except Exception as exc:
            raise _unreadable(plan, exc) from exc
        store.set_state(ingested=True)
    if todo:
        rec.stage("upscale")
        pool = None if plan.config.run.runner == "local" else pools.get(plan)
        bar = _bar(plan, todo, progress)
        try:
            if pool is None:
                _regions_local(plan, store, todo, bar, rec)
            else:
                _regions_pooled(plan, store, todo, bar, pool, rec)
        finally:
            bar.close()
    rec.stage("publish")
    publish_image(plan, store)


def _by_frame(todo: list[Any]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for task in todo:
        out.setdefault(task.frame, []).append(task)
    return out


def _regions_local(plan: Plan, store: JobStore, todo: list[Any], bar: tqdm, rec: Progress) -> None:
    """Estimate (when the model needs it), then every region, in this process."""
    worker = LocalRegions(plan, store)
    cond = Conditioning(plan, store)
    missing = cond.missing(range(plan.layout.frames))
    for i in range(0, len(missing), ESTIMATE_BATCH):
        frames = tuple(missing[i : i + ESTIMATE_BATCH])
        cond.record(frames, worker.run(EstimateTask(frames)))
    cond.release(range(plan.layout.frames))
    for task in todo:
        worker.run(task)
        bar.update(1)
        rec.regions_done()


def _regions_pooled(
    plan: Plan, store: JobStore, todo: list[Any], bar: tqdm, pool: RegionPool, rec: Progress
) -> None:
    """Estimate, then release each frame's regions to the shared pool; returns when
    every region of ``todo`` is done (raises the job's failure or a stop)."""
    by_frame = _by_frame(todo)
    frames = range(plan.layout.frames)
    cond = Conditioning(plan, store)
    channel = pool.register(plan, store)
    try:
        missing = cond.missing(frames)
        estimates = 1 if missing else 0
        if missing:
            channel.add([EstimateTask(tuple(missing))])
        channel.add([t for f in cond.release(frames) for t in by_frame.get(f, [])])
        left = len(todo)
        while left or estimates:
            settled = channel.next()
            if settled is None:
                continue
            task, result = settled
            if isinstance(task, EstimateTask):
                estimates -= 1
                cond.record(task.frames, result)
                channel.add([t for f in cond.release(frames) for t in by_frame.get(f, [])])
            else:
                left -= 1
                bar.update(1)
                rec.regions_done()
    finally:
        channel.close()


def publish_image(plan: Plan, store: JobStore) -> None:
    cfg, lay = plan.config.output, plan.layout
    final, tmp = plan.output_path, temp_name(plan.output_path)
    _, out_h, out_w, _ = lay.out_shape
    shapes = pyramid_shapes(out_h, out_w, cfg.pyramid_min_px)
    if plan.fmt not in ("png", "jpeg"):
        create_pyramid_arrays(store, shapes, cfg.tile_px)
        log.info("publish: %s with %d pyramid level(s)", plan.fmt, len(shapes))
        for level in range(1, len(shapes)):
            h, w = shapes[level]
            calls = [(plan.store_url, level, *b) for b in blocks(h, w, cfg.tile_px * 4)]
            run_tasks(plan, downsample_task, calls)
    try:
        if plan.fmt in ("png", "jpeg"):
            log.info("publish: %s", plan.fmt)
            calls = [(plan.store_url, str(tmp), plan.fmt, cfg.jpeg_quality)]
            run_tasks(plan, write_small_task, calls)
        elif plan.fmt == "tiff":
            geo = plan.info.geo_tags  # type: ignore[union-attr]
            run_tasks(plan, write_tiff_task, [(plan.store_url, str(tmp), shapes, cfg.tile_px, geo)])
        else:
            shard = lay.region_out_px
            create_ome_zarr(
                tmp, final.name, shapes, lay.channels, lay.dtype, shard, min(cfg.tile_px, shard)
            )
            calls = [
                (plan.store_url, str(tmp), level, *b)
                for level, (h, w) in enumerate(shapes)
                for b in blocks(h, w, shard)
            ]
            run_tasks(plan, copy_to_ome_task, calls)
        replace_output(tmp, final)
    except BaseException:
        discard(tmp)
        raise


# ------------------------------------------------------------------------------ videos
def _ingested(store: JobStore, n_segments: int):
    if "ingested" not in store.group:
        store.group.create_array(
            "ingested",
            shape=(max(1, n_segments),),
            dtype="uint8",
            chunks=(max(1, n_segments),),
            fill_value=0,
        )
    return store.array("ingested")


def _forget_dropped(plan: Plan, store: JobStore, ingested, start: int, stop: int) -> None:
    """With video.drop_encoded the encoder freed frames [start, stop) from the store:
    clear their flags so a resume decodes and upscales them again (the encoded file is
    redone from the first frame on resume anyway)."""
    if not plan.config.video.drop_encoded or stop <= start:
        return
    store.array("done")[start:stop] = 0
    for i, (a, b) in enumerate(plan.segments):
        if a < stop and b > start:
            ingested[i] = 0


def _encoder_args(plan: Plan, tmp: Any) -> tuple:
    return (plan.store_url, plan.info, plan.config.video, str(tmp), list(plan.remux), plan.pix_fmt)


def _run_video(
    plan: Plan, store: JobStore, todo: list[Any], pools: Pools, progress: bool, rec: Progress
) -> None:
    ingested = _ingested(store, len(plan.segments))
    tmp = temp_name(plan.output_path)
    try:
        if plan.config.run.runner == "local":
            _video_local(plan, store, todo, ingested, tmp, progress, rec)
        else:
            _video_ray(plan, store, todo, ingested, tmp, progress, pools.get(plan), rec)
        replace_output(tmp, plan.output_path)
    except BaseException:
        discard(tmp)
        raise


def _video_local(
    plan: Plan, store: JobStore, todo: list[Any], ingested, tmp, progress: bool, rec: Progress
) -> None:
    flags = ingested[...]
    rec.stage("ingest")
    for i, (a, b) in enumerate(plan.segments):
        if not flags[i]:
            stopping.check()
            try:
                ingest_segment_task(plan.info, plan.store_url, a, b)
            except Exception as exc:
                raise _unreadable(plan, exc) from exc
            ingested[i] = 1
    rec.stage("upscale")
    bar = _bar(plan, todo, progress)
    try:
        _regions_local(plan, store, todo, bar, rec)
    finally:
        bar.close()
    rec.stage("encode")
    encoder = VideoEncoder(*_encoder_args(plan, tmp))
    encoder.encode_upto(plan.layout.frames)
    rec.frames_encoded(plan.layout.frames)
    _forget_dropped(plan, store, ingested, 0, plan.layout.frames)
    stats = encoder.finish()
    log.info(
        "publish: %d frames encoded, %d packets copied", stats["frames"], stats["copied_packets"]
    )


def _video_ray(
    plan: Plan,
    store: JobStore,
    todo: list[Any],
    ingested,
    tmp,
    progress: bool,
    pool: RegionPool,
    rec: Progress,
) -> None:
    """Overlapped decode -> estimate -> upscale -> encode, all bounded.

    A frame's regions go to the shared pool once its segment is in the store and its
    conditioning is final; the encoder is asked for the longest prefix of completed
    frames. This loop waits on its own calls (decode, encode) and the pool's results
    for this job in short slices.
    """
    import ray

    frames = plan.layout.frames
    flags = ingested[...]
    by_frame = _by_frame(todo)
    left = np.zeros(frames, np.int64)
    for f, tasks in by_frame.items():
        left[f] = len(tasks)
    cond = Conditioning(plan, store)
    channel = pool.register(plan, store)
    waiting: set[int] = set()  # ingested, conditioning not final yet

    def arrived(a: int, b: int) -> None:
        missing = cond.missing(range(a, b))
        if missing:
            channel.add([EstimateTask(tuple(missing))], first=True)
        waiting.update(range(a, b))
        release()

    def release() -> None:
        for f in cond.release(sorted(waiting)):
            waiting.discard(f)
            channel.add(by_frame.get(f, []))

    def settled(task: Any, result: Any) -> None:
        if isinstance(task, EstimateTask):
            cond.record(task.frames, result)
            release()
        else:
            left[task.frame] -= 1
            bar.update(1)
            rec.regions_done()

    seg_queue = [i for i in range(len(plan.segments)) if not flags[i]]
    log.info(
        "ingest: %d of %d segment(s) to decode into %s",
        len(seg_queue),
        len(plan.segments),
        plan.store_url,
    )
    rec.stage("upscale")
    for i, (a, b) in enumerate(plan.segments):
        if flags[i]:
            arrived(a, b)
    max_ingest = max(1, int(cluster_cpus()) // 2)
    # Decode and encode go where the CPUs are (pipeline/placement).
    ingest = ray.remote(max_retries=2, **cpu_stage_options(pool.use_gpu))(ingest_segment_task)
    ingest_refs: dict[Any, int] = {}
    encoder = (
        ray.remote(VideoEncoder)
        .options(max_restarts=0, **cpu_stage_options(pool.use_gpu, actor=True))
        .remote(*_encoder_args(plan, tmp))
    )
    encoded, enc_ref, prefix = 0, None, 0
    bar = _bar(plan, todo, progress)
    try:
        while True:
            while seg_queue and len(ingest_refs) < max_ingest and not stopping.STOP.is_set():
                i = seg_queue.pop(0)
                a, b = plan.segments[i]
                ingest_refs[ingest.remote(plan.info, plan.store_url, a, b)] = i
            while prefix < frames and left[prefix] == 0:
                prefix += 1
            if enc_ref is None and prefix > encoded and not stopping.STOP.is_set():
                enc_ref = encoder.encode_upto.remote(prefix)
            if encoded == frames and enc_ref is None:
                break
            # The pool's results first (they raise this job's failure or a stop)...
            while (item := channel.next(timeout=0)) is not None:
                settled(*item)
            own = list(ingest_refs) + ([enc_ref] if enc_ref else [])
            if not own:
                item = channel.next(timeout=0.1)
                if item is not None:
                    settled(*item)
                continue
            # ...then this job's own calls.
            ready, _ = ray.wait(own, num_returns=1, timeout=0.05)
            for ref in ready:
                if ref in ingest_refs:
                    i = ingest_refs.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise _unreadable(plan, exc) from exc
                    ingested[i] = 1
                    arrived(*plan.segments[i])
                else:
                    before, encoded = encoded, ray.get(ref)
                    enc_ref = None
                    _forget_dropped(plan, store, ingested, before, encoded)
                    bar.set_postfix_str(f"encoded {encoded}/{frames}", refresh=False)
                    rec.frames_encoded(encoded)
        stats = wait_all([encoder.finish.remote()])[0]
        log.info(
            "publish: %d frames encoded, %d packets copied",
            stats["frames"],
            stats["copied_packets"],
        )
    finally:
        bar.close()
        channel.close()
        ray.kill(encoder)
