"""Run one job: probe -> ingest -> upscale -> publish, with the job store as the state.

Images run the stages one after the other. Videos run them overlapped: decode segments
land in the store, their frames' regions go to the actor pool as soon as they are in,
and the encoder follows in frame order as frames complete. Running the same job again
resumes it: only regions without a ``done`` flag (and segments not yet ingested) run.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.cluster import cluster_cpus, ray_runtime
from pipeline.conditioning import Conditioning
from pipeline.config import JobConfig
from pipeline.encode import VideoEncoder
from pipeline.errors import UserError
from pipeline.ingest import ingest_rows_task, plan_bands
from pipeline.placement import cpu_stage_options
from pipeline.plan import Plan, plan_job
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
from pipeline.schedule import LocalRegions, RegionPool, cause, run_tasks
from pipeline.store import JobStore, open_for_job, remove_store
from pipeline.tiling import plan_regions
from pipeline.video import ingest_segment_task
from workers.region_worker import EstimateTask, RegionTask

log = logging.getLogger(__name__)
ESTIMATE_BATCH = 32  # frames per estimate call on the local runner

__all__ = ["Summary", "plan_job", "run_job"]


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
    local = plan.config.run.runner == "local"
    with nullcontext() if local else ray_runtime(plan.config.run.address):
        _check_weights(plan)
        store = open_for_job(plan.store_url, plan.spec, plan.layout, restart)
        discard = False
        try:
            _sweep_partials(plan.output_path)
            todo = _todo_regions(plan, store)
            if plan.is_video:
                _run_video(plan, store, todo, progress)
            else:
                _run_image(plan, store, todo, progress)
        except UnreadableInput:
            # Nothing worth resuming from a damaged input: leave no store behind.
            discard = not plan.config.store.keep and not store.done_mask().any()
            raise
        finally:
            store.unlock()
            if discard:
                remove_store(plan.store_url)
    if not plan.config.store.keep:
        remove_store(plan.store_url)
    rows, cols = lay.regions
    return Summary(
        output=str(plan.output_path),
        seconds=time.perf_counter() - t0,
        out_megapixels=lay.frames * lay.out_shape[1] * lay.out_shape[2] / 1e6,
        frames=lay.frames,
        regions_total=lay.frames * rows * cols,
        regions_run=len(todo),
        store_url=plan.store_url,
    )


def weights_problems_task(weights: str | None) -> list[str]:
    """Runs where the workers run (they need the weights there), before any work."""
    try:
        from workers.s3diff.weights import check_weights, resolve_weights_dir

        return check_weights(resolve_weights_dir(weights))
    except UserError as exc:
        return [str(exc)]


def _check_weights(plan: Plan) -> None:
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
    for name in glob.glob(glob.escape(str(final.parent / head)) + "*"):
        path = Path(name)
        if not path.name.endswith(final.suffix):
            continue
        pid = path.name[len(head) : len(path.name) - len(final.suffix)]
        if not pid.isdigit() or int(pid) == os.getpid() or psutil.pid_exists(int(pid)):
            continue
        log.info("removing %s, left by an interrupted run", path)
        _discard(path)


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
def _run_image(plan: Plan, store: JobStore, todo: list[Any], progress: bool) -> None:
    if not store.state.get("ingested"):
        chunk_rows = store.array("input").chunks[1]
        bands = plan_bands(plan.info, chunk_rows, int(cluster_cpus()) * 2)
        log.info("ingest: %d band(s) into %s", len(bands), plan.store_url)
        try:
            run_tasks(plan, ingest_rows_task, [(plan.info, plan.store_url, a, b) for a, b in bands])
        except Exception as exc:
            raise _unreadable(plan, exc) from exc
        store.set_state(ingested=True)
    if todo:
        bar = _bar(plan, todo, progress)
        try:
            if plan.config.run.runner == "local":
                _regions_local(plan, store, todo, bar)
            else:
                _regions_ray(plan, store, todo, bar)
        finally:
            bar.close()
    publish_image(plan, store)


def _by_frame(todo: list[Any]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for task in todo:
        out.setdefault(task.frame, []).append(task)
    return out


def _regions_local(plan: Plan, store: JobStore, todo: list[Any], bar: tqdm) -> None:
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


def _regions_ray(plan: Plan, store: JobStore, todo: list[Any], bar: tqdm) -> None:
    import ray

    by_frame = _by_frame(todo)
    frames = range(plan.layout.frames)
    cond = Conditioning(plan, store)
    pool = RegionPool(plan, store, len(todo))
    missing = cond.missing(frames)
    if missing:
        pool.add([EstimateTask(tuple(missing))])
    pool.add([t for f in cond.release(frames) for t in by_frame.get(f, [])])
    try:
        while pool.busy:
            pool.fill()
            ready, _ = ray.wait(pool.refs(), num_returns=1)
            for ref in ready:
                settled = pool.handle(ref)
                if settled is None:
                    continue
                task, result = settled
                if isinstance(task, EstimateTask):
                    cond.record(task.frames, result)
                    pool.add([t for f in cond.release(frames) for t in by_frame.get(f, [])])
                else:
                    bar.update(1)
    finally:
        pool.close()


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
        _discard(tmp)
        raise


def _discard(tmp: Any) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists():
        tmp.unlink()


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


def _run_video(plan: Plan, store: JobStore, todo: list[Any], progress: bool) -> None:
    ingested = _ingested(store, len(plan.segments))
    tmp = temp_name(plan.output_path)
    try:
        if plan.config.run.runner == "local":
            _video_local(plan, store, todo, ingested, tmp, progress)
        else:
            _video_ray(plan, store, todo, ingested, tmp, progress)
        replace_output(tmp, plan.output_path)
    except BaseException:
        _discard(tmp)
        raise


def _video_local(
    plan: Plan, store: JobStore, todo: list[Any], ingested, tmp, progress: bool
) -> None:
    flags = ingested[...]
    for i, (a, b) in enumerate(plan.segments):
        if not flags[i]:
            try:
                ingest_segment_task(plan.info, plan.store_url, a, b)
            except Exception as exc:
                raise _unreadable(plan, exc) from exc
            ingested[i] = 1
    bar = _bar(plan, todo, progress)
    try:
        _regions_local(plan, store, todo, bar)
    finally:
        bar.close()
    encoder = VideoEncoder(*_encoder_args(plan, tmp))
    encoder.encode_upto(plan.layout.frames)
    _forget_dropped(plan, store, ingested, 0, plan.layout.frames)
    stats = encoder.finish()
    log.info(
        "publish: %d frames encoded, %d packets copied", stats["frames"], stats["copied_packets"]
    )


def _video_ray(plan: Plan, store: JobStore, todo: list[Any], ingested, tmp, progress: bool) -> None:
    """Overlapped decode -> estimate -> upscale -> encode, all bounded, driven by ray.wait.

    A frame's regions are queued once its segment is in the store and its conditioning
    is final; the encoder is asked for the longest prefix of completed frames.
    """
    import ray

    frames = plan.layout.frames
    flags = ingested[...]
    by_frame = _by_frame(todo)
    left = np.zeros(frames, np.int64)
    for f, tasks in by_frame.items():
        left[f] = len(tasks)
    cond = Conditioning(plan, store)
    pool = RegionPool(plan, store, max(1, len(todo)))
    waiting: set[int] = set()  # ingested, conditioning not final yet

    def arrived(a: int, b: int) -> None:
        missing = cond.missing(range(a, b))
        if missing:
            pool.add([EstimateTask(tuple(missing))], first=True)
        waiting.update(range(a, b))
        release()

    def release() -> None:
        for f in cond.release(sorted(waiting)):
            waiting.discard(f)
            pool.add(by_frame.get(f, []))

    seg_queue = [i for i in range(len(plan.segments)) if not flags[i]]
    log.info(
        "ingest: %d of %d segment(s) to decode into %s",
        len(seg_queue),
        len(plan.segments),
        plan.store_url,
    )
    for i, (a, b) in enumerate(plan.segments):
        if flags[i]:
            arrived(a, b)
    max_ingest = max(1, int(cluster_cpus()) // 2)
    cpu_stage = cpu_stage_options(pool.use_gpu)  # decode and encode go where CPUs are
    ingest = ray.remote(max_retries=2, **cpu_stage)(ingest_segment_task)
    ingest_refs: dict[Any, int] = {}
    encoder = (
        ray.remote(VideoEncoder)
        .options(max_restarts=0, **cpu_stage)
        .remote(*_encoder_args(plan, tmp))
    )
    encoded, enc_ref, prefix = 0, None, 0
    bar = _bar(plan, todo, progress)
    try:
        while True:
            while seg_queue and len(ingest_refs) < max_ingest:
                i = seg_queue.pop(0)
                a, b = plan.segments[i]
                ingest_refs[ingest.remote(plan.info, plan.store_url, a, b)] = i
            pool.fill()
            while prefix < frames and left[prefix] == 0:
                prefix += 1
            if enc_ref is None and prefix > encoded:
                enc_ref = encoder.encode_upto.remote(prefix)
            if encoded == frames and enc_ref is None:
                break
            refs = list(ingest_refs) + pool.refs() + ([enc_ref] if enc_ref else [])
            ready, _ = ray.wait(refs, num_returns=1)
            for ref in ready:
                if ref in ingest_refs:
                    i = ingest_refs.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise _unreadable(plan, exc) from exc
                    ingested[i] = 1
                    arrived(*plan.segments[i])
                elif ref == enc_ref:
                    before, encoded = encoded, ray.get(ref)
                    enc_ref = None
                    _forget_dropped(plan, store, ingested, before, encoded)
                    bar.set_postfix_str(f"encoded {encoded}/{frames}", refresh=False)
                else:
                    settled = pool.handle(ref)
                    if settled is None:
                        continue
                    task, result = settled
                    if isinstance(task, EstimateTask):
                        cond.record(task.frames, result)
                        release()
                    else:
                        left[task.frame] -= 1
                        bar.update(1)
        stats = ray.get(encoder.finish.remote())
        log.info(
            "publish: %d frames encoded, %d packets copied",
            stats["frames"],
            stats["copied_packets"],
        )
    finally:
        bar.close()
        pool.close()
        ray.kill(encoder)
