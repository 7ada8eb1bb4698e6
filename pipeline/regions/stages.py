"""The region stages every job shares (estimate, upscale) and the region worker pool.

Function stages name a "module:function" run as a task; actor stages name a class that
loads what it needs once, in its constructor (``setup``), and then serves calls on
addresses: the region workers' ``estimate(task, job)`` and ``upscale(task, job)``, one
method per stage (``ESTIMATE_METHOD``, ``UPSCALE_METHOD``; under Ray an upscale is
``REGION_SPLIT``). Names are resolved only where the stage runs, so nothing here
imports worker code.

    estimate degradation scores of frames                  (region workers)
    upscale  one output region: its tiles, blended         (region workers, GPUs)

The image path's stages are in ``pipeline.image.stages``, the video path's in
``pipeline.video.stages``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import JobConfig
from pipeline.models import ModelSpec
from pipeline.runner.cluster import cluster_cpus, cluster_gpus
from pipeline.runner.placement import region_actor_options
from pipeline.runner.stage import PoolSpec, Stage
from pipeline.runner.tasks import EstimateTask, RegionTask


@dataclass(frozen=True)
class EstimateStage(Stage):
    """Degradation scores of frames: the region workers' ``estimate``. Estimates go
    before regions, since each unblocks whole frames."""

    name: str = "estimate"
    target: str = "workers.region_worker:RegionWorker"
    actor: bool = True
    takes: Any = EstimateTask
    priority: int = 2


@dataclass(frozen=True)
class UpscaleStage(Stage):
    """One output region, its tiles blended: the region workers' ``upscale`` (under Ray
    ``REGION_SPLIT``); after its frame's conditioning is final."""

    name: str = "upscale"
    target: str = "workers.region_worker:RegionWorker"
    actor: bool = True
    takes: Any = RegionTask
    priority: int = 3


REGION_WORKER = UpscaleStage()  # the pool's actor class
# Under Ray an upscale call is two methods of its region worker: the model and blend on
# the actor's sequential thread, the halo read and shard write on its io threads.
REGION_SPLIT = ("compute", "io")
ESTIMATE_METHOD, UPSCALE_METHOD = "estimate", "upscale"  # the in-process runner's calls


def region_stages(run_retries: int) -> tuple[EstimateStage, UpscaleStage]:
    """(estimate, upscale): both on the region workers, ``run_retries`` attempts more."""
    return EstimateStage(retries=run_retries), UpscaleStage(retries=run_retries)


REGION_BATCH_LR_PX = 256 * 256  # the LR pixels of the regions one worker call may carry
MAX_REGIONS_PER_CALL = 16


def regions_per_call(height: int, width: int, region_lr_px: int) -> int:
    """How many regions one worker call may carry: Ray's cost per call is the driver's
    main cost per small region (a frame of a few hundred pixels is one region), so
    small regions go several at a time, up to ``REGION_BATCH_LR_PX`` LR pixels."""
    area = min(height, region_lr_px) * min(width, region_lr_px)
    return max(1, min(MAX_REGIONS_PER_CALL, REGION_BATCH_LR_PX // max(1, area)))


def calls_batch(ready: int, workers: int, most: int) -> int:
    """Regions per call for ``ready`` regions released at once: at most ``most``, and
    few enough that every one of ``workers`` gets some."""
    return max(1, min(most, -(-ready // max(1, workers * 2))))


def workers_use_gpu(cfg: JobConfig) -> bool:
    return cfg.run.runner != "local" and cluster_gpus() > 0 and cfg.run.gpus_per_actor > 0


def region_pool(cfg: JobConfig, model: ModelSpec, expected_regions: int) -> PoolSpec:
    """Region workers for this model config: one per GPU (or ``run.actors``), shared by
    every job of a run with the same model config."""
    run = cfg.run
    key = repr((model.factory, cfg.model, run))
    if run.runner == "local":
        kwargs: dict[str, Any] = {"factory": model.factory, "threads": int(cluster_cpus())}
        return PoolSpec("upscale|" + key, REGION_WORKER.target, (cfg.model,), kwargs)
    use_gpu = workers_use_gpu(cfg)
    if run.actors:
        count = run.actors
    elif use_gpu:
        count = int(cluster_gpus() // run.gpus_per_actor)
    else:
        count = int(cluster_cpus())
    count = max(1, min(count, max(1, expected_regions)))
    options: dict[str, Any] = dict(region_actor_options())  # spread over nodes
    if use_gpu:
        # GPU actors take no CPU slot so CPU stages (ingest, encode) keep the cores.
        options.update(num_gpus=run.gpus_per_actor, num_cpus=0)
    else:
        # The pool lives for the whole run (a batch shares it), so CPU workers must
        # leave one CPU to the CPU stages (ingest, publish) or those never schedule.
        spare = max(0.0, cluster_cpus() - 1.0)
        options.update(num_cpus=round(min(1.0, spare / count), 4))
    where = "GPU" if use_gpu else "CPU"
    return PoolSpec(
        "upscale|" + key,
        REGION_WORKER.target,
        (cfg.model,),
        {"factory": model.factory},
        count=count,
        options=options,
        describe=f"upscale: %d actor(s) on {where}, model {model.name}",
    )
