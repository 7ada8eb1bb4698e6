"""Run one job: probe -> ingest -> upscale -> publish, with the job store as the state.

The driver plans and tracks; Ray tasks copy pixels in and out, and a pool of region
worker actors does the upscaling with a bounded number of regions in flight. Running
the same job again resumes it: only regions without a ``done`` flag are scheduled.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.cluster import cluster_cpus, cluster_gpus, ray_runtime
from pipeline.config import JobConfig, resolve_model_defaults
from pipeline.errors import JobFailed, UserError
from pipeline.ingest import ingest_rows_task, plan_bands
from pipeline.models import ModelSpec, get_spec
from pipeline.probe import ImageInfo, identity, probe
from pipeline.publish import (
    blocks,
    check_output,
    copy_to_ome_task,
    create_ome_zarr,
    create_pyramid_arrays,
    downsample_task,
    output_format,
    pyramid_shapes,
    replace_output,
    temp_name,
    write_small_task,
    write_tiff_task,
)
from pipeline.store import JobStore, Layout, default_store_url, open_for_job, remove_store
from pipeline.tiling import plan_regions, shard_geometry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Summary:
    output: str
    seconds: float
    out_megapixels: float
    regions_total: int
    regions_run: int
    store_url: str

    def line(self) -> str:
        rate = self.out_megapixels / max(self.seconds, 1e-9)
        resumed = self.regions_total - self.regions_run
        extra = f", {resumed} regions resumed from the store" if resumed else ""
        return (
            f"done in {self.seconds:.1f} s: {self.out_megapixels:.1f} output megapixels "
            f"({rate:.1f} MP/s), {self.regions_run}/{self.regions_total} regions run{extra} "
            f"-> {self.output}"
        )


@dataclass(frozen=True)
class Plan:
    """Everything decided before Ray starts; bad input and config fail here."""

    input_path: str
    output_path: Path
    config: JobConfig
    model: ModelSpec
    info: ImageInfo
    layout: Layout
    fmt: str
    spec: dict[str, Any]
    store_url: str


def _check_paths(input_path: Path, output: Path, overwrite: bool) -> None:
    if not output.parent.exists():
        raise UserError(f"output directory {output.parent} does not exist; create it first")
    if not os.access(output.parent, os.W_OK):
        raise UserError(f"output directory {output.parent} is not writable")
    if input_path.exists() and output.resolve() == input_path.resolve():
        raise UserError("the output path is the input path; choose another output name")
    if output.exists() and not overwrite:
        raise UserError(f"{output} already exists; pass --overwrite to replace it")


def plan_job(input_path: str, output_path: str, cfg: JobConfig, overwrite: bool) -> Plan:
    src, out = Path(input_path), Path(output_path)
    fmt = output_format(out)
    _check_paths(src, out, overwrite)
    model = get_spec(cfg.model.name)
    if model.scales is not None and cfg.model.scale not in model.scales:
        raise UserError(
            f"model {model.name!r} supports scales {model.scales}, not {cfg.model.scale}"
        )
    cfg = resolve_model_defaults(
        cfg,
        model.default_tile_px,
        model.default_overlap_px,
        model.size_multiple,
        model.min_overlap_px,
    )
    info = probe(src, cfg.output.max_input_decode_mb)
    scale = cfg.model.scale
    check_output(
        out, fmt, (info.height * scale, info.width * scale), info.channels, info.dtype, cfg.output
    )
    shard, chunk = shard_geometry(scale, cfg.store.region_out_px, cfg.store.chunk_out_px)
    layout = Layout(
        frames=1,
        height=info.height,
        width=info.width,
        channels=info.channels,
        dtype=info.dtype,
        scale=scale,
        region_out_px=shard,
        chunk_out_px=chunk,
    )
    # What must match for a store to be resumed: the input and everything that
    # changes pixels. Actor counts, addresses and batch sizes may change freely.
    spec = {
        "input": identity(src),
        "model": {"name": cfg.model.name, "scale": scale, "weights": cfg.model.weights},
        "tiling": {
            "tile_px": cfg.tiling.tile_px,
            "overlap_px": cfg.tiling.overlap_px,
            "window": cfg.tiling.window,
        },
        "layout": layout.__dict__,
        "config": cfg.to_dict() | {"run": None, "store": None},
    }
    url = default_store_url(str(src), str(out), cfg.store.work_dir)
    return Plan(str(src), out, cfg, model, info, layout, fmt, spec, url)


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
    info = plan.info
    log.info(
        "probe: %s %dx%d, %d channel(s), %s -> %dx%d %s",
        info.kind,
        info.width,
        info.height,
        info.channels,
        info.dtype,
        info.width * plan.layout.scale,
        info.height * plan.layout.scale,
        plan.fmt,
    )
    local = plan.config.run.runner == "local"
    with nullcontext() if local else ray_runtime(plan.config.run.address):
        store = open_for_job(plan.store_url, plan.spec, plan.layout, restart)
        try:
            if not store.state.get("ingested"):
                ingest(plan, store)
                store.set_state(ingested=True)
            regions_run = upscale(plan, store, progress)
            publish(plan, store)
        finally:
            store.unlock()
    if not plan.config.store.keep:
        remove_store(plan.store_url)
    lay = plan.layout
    rows, cols = lay.regions
    return Summary(
        output=str(plan.output_path),
        seconds=time.perf_counter() - t0,
        out_megapixels=lay.frames * lay.out_shape[1] * lay.out_shape[2] / 1e6,
        regions_total=lay.frames * rows * cols,
        regions_run=regions_run,
        store_url=plan.store_url,
    )


# --------------------------------------------------------------------------- stages
def _run_tasks(plan: Plan, fn, calls: list[tuple], num_cpus: float = 1) -> list[Any]:
    """Run ``fn(*call)`` for every call as Ray tasks (in this process for the local runner)."""
    import ray

    if plan.config.run.runner == "local":
        return [fn(*args) for args in calls]

    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(fn)
    refs = [remote.remote(*args) for args in calls]
    return ray.get(refs)


def ingest(plan: Plan, store: JobStore) -> None:
    chunk_rows = store.array("input").chunks[1]
    bands = plan_bands(plan.info, chunk_rows, int(cluster_cpus()) * 2)
    log.info("ingest: %d band(s) into %s", len(bands), plan.store_url)
    _run_tasks(plan, ingest_rows_task, [(plan.info, plan.store_url, y0, y1) for y0, y1 in bands])


def _actor_count(cfg: JobConfig, use_gpu: bool, pending: int) -> int:
    if cfg.run.actors:
        n = cfg.run.actors
    elif use_gpu:
        n = int(cluster_gpus() // cfg.run.gpus_per_actor)
    else:
        n = int(cluster_cpus())
    return max(1, min(n, pending))


def make_actors(plan: Plan, count: int, use_gpu: bool) -> list[Any]:
    import ray

    from workers.region_worker import RegionWorker

    options: dict[str, Any] = {"max_restarts": 2, "max_task_retries": 0}
    if use_gpu:
        # GPU actors take no CPU slot so CPU stages (ingest, publish) keep the cores.
        options.update(num_gpus=plan.config.run.gpus_per_actor, num_cpus=0)
    else:
        options.update(num_cpus=1)
    cls = ray.remote(RegionWorker).options(**options)
    return [
        cls.remote(plan.store_url, plan.config, plan.model.size_multiple, plan.model.context_px)
        for _ in range(count)
    ]


def upscale(plan: Plan, store: JobStore, progress: bool) -> int:
    """Schedule every region without a done flag; returns how many were run."""

    from workers.region_worker import RegionTask

    lay = plan.layout
    done = store.done_mask()
    regions = [
        RegionTask(r.frame, r.row, r.col)
        for f in range(lay.frames)
        for r in plan_regions(f, lay.height, lay.width, lay.region_lr_px)
        if not done[r.frame, r.row, r.col]
    ]
    total = int(done.size)
    if not regions:
        log.info("upscale: all %d regions already done", total)
        return 0
    cfg = plan.config
    bar = tqdm(
        total=total,
        initial=total - len(regions),
        unit="region",
        disable=not progress,
        dynamic_ncols=True,
        desc="upscale",
    )
    try:
        if cfg.run.runner == "local":
            _upscale_local(plan, store, regions, bar)
        else:
            _upscale_ray(plan, store, regions, bar)
    finally:
        bar.close()
    return len(regions)


def _failed(plan: Plan, task: Any, attempts: int, exc: Exception) -> JobFailed:
    return JobFailed(
        f"frame {task.frame} region (row {task.row}, col {task.col}) failed {attempts} "
        f"time(s): {_cause(exc)}; the job store {plan.store_url} is kept, so a fixed rerun "
        "resumes"
    )


def _upscale_local(plan: Plan, store: JobStore, regions: list[Any], bar: tqdm) -> None:
    """Sequential, in-process: the same worker code without Ray (tests, debugging)."""
    from workers.region_worker import RegionWorker

    worker = RegionWorker(
        plan.store_url,
        plan.config,
        plan.model.size_multiple,
        plan.model.context_px,
        threads=int(cluster_cpus()),
    )
    retries = plan.config.run.region_retries
    for task in regions:
        for attempt in range(retries + 1):
            try:
                worker.process(task)
                break
            except Exception as exc:
                if attempt == retries:
                    raise _failed(plan, task, attempt + 1, exc) from exc
                log.warning(
                    "retrying frame %d region %d,%d: %s",
                    task.frame,
                    task.row,
                    task.col,
                    _cause(exc),
                )
        store.mark_done(task.frame, task.row, task.col)
        bar.update(1)


def _upscale_ray(plan: Plan, store: JobStore, regions: list[Any], bar: tqdm) -> None:
    """Actor pool with a bounded number of regions in flight per actor."""
    import ray

    cfg = plan.config
    use_gpu = cluster_gpus() > 0 and cfg.run.gpus_per_actor > 0
    actors = make_actors(plan, _actor_count(cfg, use_gpu, len(regions)), use_gpu)
    log.info(
        "upscale: %d region(s) on %d actor(s) (%s), tile %d px, overlap %d px",
        len(regions),
        len(actors),
        "GPU" if use_gpu else "CPU",
        cfg.tiling.tile_px,
        cfg.tiling.overlap_px,
    )
    pending = deque((task, 0) for task in regions)
    in_flight: dict[Any, tuple[int, Any, int]] = {}
    load = [0] * len(actors)
    limit = cfg.run.in_flight_per_actor
    try:
        while pending or in_flight:
            while pending and min(load) < limit:
                idx = load.index(min(load))
                task, attempt = pending.popleft()
                in_flight[actors[idx].process.remote(task)] = (idx, task, attempt)
                load[idx] += 1
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                idx, task, attempt = in_flight.pop(ref)
                load[idx] -= 1
                try:
                    ray.get(ref)
                except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                    if attempt >= cfg.run.region_retries:
                        raise _failed(plan, task, attempt + 1, exc) from exc
                    log.warning(
                        "retrying frame %d region %d,%d: %s",
                        task.frame,
                        task.row,
                        task.col,
                        _cause(exc),
                    )
                    pending.append((task, attempt + 1))
                    continue
                store.mark_done(task.frame, task.row, task.col)
                bar.update(1)
    finally:
        for actor in actors:
            ray.kill(actor)


def _cause(exc: Exception) -> str:
    text = str(getattr(exc, "cause", None) or exc)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def publish(plan: Plan, store: JobStore) -> None:
    cfg, lay = plan.config.output, plan.layout
    final = plan.output_path
    tmp = temp_name(final)
    _, out_h, out_w, _ = lay.out_shape
    shapes = pyramid_shapes(out_h, out_w, cfg.pyramid_min_px)
    if plan.fmt not in ("png", "jpeg"):
        create_pyramid_arrays(store, shapes, cfg.tile_px)
        log.info("publish: %s with %d pyramid level(s)", plan.fmt, len(shapes))
        block = cfg.tile_px * 4
        for level in range(1, len(shapes)):
            h, w = shapes[level]
            calls = [(plan.store_url, level, *b) for b in blocks(h, w, block)]
            _run_tasks(plan, downsample_task, calls)
    try:
        if plan.fmt in ("png", "jpeg"):
            log.info("publish: %s", plan.fmt)
            calls = [(plan.store_url, str(tmp), plan.fmt, cfg.jpeg_quality)]
            _run_tasks(plan, write_small_task, calls)
        elif plan.fmt == "tiff":
            _run_tasks(
                plan,
                write_tiff_task,
                [(plan.store_url, str(tmp), shapes, cfg.tile_px, plan.info.geo_tags)],
            )
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
            _run_tasks(plan, copy_to_ome_task, calls)
        replace_output(tmp, final)
    except BaseException:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
