"""The stages of a job: what each runs, where, and with which resources.

Function stages name a "module:function" run as a task; actor stages name a class that
loads what it needs once, in its constructor (``setup``), and then serves calls on
addresses (``process(task, job)`` for region workers). Names are resolved only where
the stage runs, so nothing here imports worker code.

    ingest   image row bands -> ``input``                  (1 CPU each)
    decode   video segment (keyframe-aligned) -> ``input`` (CPUs where the CPUs are)
    estimate degradation scores of frames                  (region workers)
    upscale  one output region: its tiles, blended         (region workers, GPUs)
    pyramid  one block of a pyramid level from the level below (1 CPU)
    write    the output file's pixels (TIFF, PNG/JPEG, OME-Zarr blocks) (1 CPU)
    encode   one video segment's frames -> its packets      (CPU tasks, several at once)
             (a frame sequence output: -> its frame files, ``sequence_write_stage``)
    assemble the segments' packets + copied streams -> file (one CPU task)
"""

from __future__ import annotations

from typing import Any

from pipeline.cluster import cluster_cpus, cluster_gpus
from pipeline.config import JobConfig
from pipeline.models import ModelSpec
from pipeline.placement import cpu_stage_options, region_actor_options
from pipeline.runner.stage import PoolSpec, Stage

REGION_WORKER = "workers.region_worker:RegionWorker"
WEIGHTS_CHECK = "workers.s3diff.preflight:weights_problems"
# Under Ray an upscale call is two methods of its region worker: the model and blend on
# the actor's sequential thread, the halo read and shard write on its io threads.
REGION_SPLIT = ("compute", "io")

INGEST = Stage("ingest", "pipeline.ingest:ingest_rows_task", cpus=1, priority=1)
PYRAMID = Stage("pyramid", "pipeline.publish:downsample_task", cpus=1, priority=4)
WRITE_TIFF = Stage("write", "pipeline.publish:write_tiff_task", cpus=1, priority=4)
WRITE_SMALL = Stage("write", "pipeline.publish:write_small_task", cpus=1, priority=4)
WRITE_OME = Stage("write", "pipeline.publish:copy_to_ome_task", cpus=1, priority=4)


def region_stages(run_retries: int) -> tuple[Stage, Stage]:
    """(estimate, upscale): both on the region workers; estimates go first, since each
    unblocks whole frames."""
    return (
        Stage("estimate", REGION_WORKER, actor=True, retries=run_retries, priority=2),
        Stage("upscale", REGION_WORKER, actor=True, retries=run_retries, priority=3),
    )


def workers_use_gpu(cfg: JobConfig) -> bool:
    return cfg.run.runner != "local" and cluster_gpus() > 0 and cfg.run.gpus_per_actor > 0


def region_pool(cfg: JobConfig, model: ModelSpec, expected_regions: int) -> PoolSpec:
    """Region workers for this model config: one per GPU (or ``run.actors``), shared by
    every job of a run with the same model config."""
    run = cfg.run
    key = repr((model.factory, cfg.model, run))
    if run.runner == "local":
        kwargs: dict[str, Any] = {"factory": model.factory, "threads": int(cluster_cpus())}
        return PoolSpec("upscale|" + key, REGION_WORKER, (cfg.model,), kwargs)
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
        REGION_WORKER,
        (cfg.model,),
        {"factory": model.factory},
        count=count,
        options=options,
        describe=f"upscale: %d actor(s) on {where}, model {model.name}",
    )


def decode_stage(cfg: JobConfig, sequence: bool = False) -> Stage:
    """Video decode tasks: one CPU each where the CPUs are; at most half the cluster's
    CPUs decode at once, so the encoder and the driver keep theirs. A frame sequence's
    segments decode file by file (``pipeline.sequence``)."""
    cpus = cpu_stage_options(workers_use_gpu(cfg))["num_cpus"]
    return Stage(
        "decode",
        "pipeline.sequence:ingest_sequence_task"
        if sequence
        else "pipeline.video:ingest_segment_task",
        cpus=cpus,
        max_in_flight=max(1, int(cluster_cpus()) // 2),
        priority=1,
        spread=True,
    )


def encoder_plan(cfg: JobConfig) -> tuple[int, int]:
    """(encoders at once, threads each). Threads: ``video.encoder_threads``, else up to 4
    (x264/x265 scale well to about that per stream, and several streams scale on).
    Encoders: ``video.encoders``, else as many as the cluster's CPUs hold with one
    encoder's worth left for decode and the driver (at least 1)."""
    cpus = int(cluster_cpus())
    threads = cfg.video.encoder_threads or max(1, min(4, cpus))
    count = cfg.video.encoders or max(1, cpus // threads - 1)
    return count, threads


def encode_stage(cfg: JobConfig) -> tuple[Stage, int]:
    """Segment encode tasks (CPU work: H100/H200 have no NVENC) and their threads. Each
    asks for its threads' CPUs (at most half the cluster's) when the workers are on GPUs,
    so Ray spreads encoders over the nodes' CPUs; none when the workers hold the CPUs."""
    count, threads = encoder_plan(cfg)
    use_gpu = workers_use_gpu(cfg)
    cpus = min(float(threads), cluster_cpus() / 2) if use_gpu else 0.0
    stage = Stage(
        "encode",
        "pipeline.segments:encode_segment_task",
        cpus=cpus,
        max_in_flight=count,
        priority=0,
        spread=True,
    )
    return stage, threads


def assemble_stage(cfg: JobConfig) -> Stage:
    cpus = cpu_stage_options(workers_use_gpu(cfg))["num_cpus"]
    return Stage("assemble", "pipeline.assemble:assemble_task", cpus=cpus, priority=0)


def sequence_write_stage(cfg: JobConfig) -> Stage:
    """A frame sequence output's segment writers, in the encoders' place and number."""
    count, _ = encoder_plan(cfg)
    cpus = min(1.0, cluster_cpus() / 2) if workers_use_gpu(cfg) else 0.0
    return Stage(
        "encode",
        "pipeline.sequence_out:write_frames_task",
        cpus=cpus,
        max_in_flight=count,
        priority=0,
        spread=True,
    )


def sequence_check_stage(cfg: JobConfig) -> Stage:
    cpus = cpu_stage_options(workers_use_gpu(cfg))["num_cpus"]
    return Stage("assemble", "pipeline.sequence_out:check_sequence_task", cpus=cpus, priority=0)
