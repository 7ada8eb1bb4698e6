"""The region stages every job shares (estimate, upscale) and the region worker pool.

Function stages name a "module:function" run as a task; actor stages name a class that
loads what it needs once, in its constructor (``setup``), and then serves calls on
addresses (``process(task, job)`` for region workers). Names are resolved only where
the stage runs, so nothing here imports worker code.

    estimate degradation scores of frames                  (region workers)
    upscale  one output region: its tiles, blended         (region workers, GPUs)

The image path's stages are in ``pipeline.image.stages``, the video path's in
``pipeline.video.stages``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pipeline.config import JobConfig
from pipeline.models import ModelSpec
from pipeline.runner.cluster import cluster_cpus, cluster_gpus
from pipeline.runner.placement import region_actor_options
from pipeline.runner.stage import PoolSpec, Stage

# The region workers' stage: upscale (estimate is the same actors' other method).
REGION_WORKER = Stage("upscale", "workers.region_worker:RegionWorker", actor=True, priority=3)
# Under Ray an upscale call is two methods of its region worker: the model and blend on
# the actor's sequential thread, the halo read and shard write on its io threads.
REGION_SPLIT = ("compute", "io")


def region_stages(run_retries: int) -> tuple[Stage, Stage]:
    """(estimate, upscale): both on the region workers; estimates go first, since each
    unblocks whole frames."""
    upscale = replace(REGION_WORKER, retries=run_retries)
    return replace(upscale, name="estimate", priority=2), upscale


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
