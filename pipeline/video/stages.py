"""The video path's stages: decode segments, encode them, assemble the file.

decode   video segment (keyframe-aligned) -> ``input`` (CPUs where the CPUs are)
encode   one video segment's frames -> its packets      (CPU tasks, several at once)
         (a frame sequence output: -> its frame files, ``sequence_write_stage``)
assemble the segments' packets + copied streams -> file (one CPU task)
"""

from __future__ import annotations

from pipeline.config import JobConfig
from pipeline.job.regions import workers_use_gpu
from pipeline.runner.cluster import cluster_cpus
from pipeline.runner.placement import cpu_stage_options
from pipeline.runner.stage import Stage


def decode_stage(cfg: JobConfig, sequence: bool = False) -> Stage:
    """Video decode tasks: one CPU each where the CPUs are; at most half the cluster's
    CPUs decode at once, so the encoder and the driver keep theirs. A frame sequence's
    segments decode file by file (``pipeline.video.sequence_in``)."""
    cpus = cpu_stage_options(workers_use_gpu(cfg))["num_cpus"]
    return Stage(
        "decode",
        "pipeline.video.sequence_in:ingest_sequence_task"
        if sequence
        else "pipeline.video.decode:ingest_segment_task",
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
        "pipeline.video.encode:encode_segment_task",
        cpus=cpus,
        max_in_flight=count,
        priority=0,
        spread=True,
    )
    return stage, threads


def assemble_stage(cfg: JobConfig) -> Stage:
    cpus = cpu_stage_options(workers_use_gpu(cfg))["num_cpus"]
    return Stage("assemble", "pipeline.video.assemble:assemble_task", cpus=cpus, priority=0)


def sequence_write_stage(cfg: JobConfig) -> Stage:
    """A frame sequence output's segment writers, in the encoders' place and number."""
    count, _ = encoder_plan(cfg)
    cpus = min(1.0, cluster_cpus() / 2) if workers_use_gpu(cfg) else 0.0
    return Stage(
        "encode",
        "pipeline.video.sequence_out:write_frames_task",
        cpus=cpus,
        max_in_flight=count,
        priority=0,
        spread=True,
    )


def sequence_check_stage(cfg: JobConfig) -> Stage:
    cpus = cpu_stage_options(workers_use_gpu(cfg))["num_cpus"]
    return Stage(
        "assemble", "pipeline.video.sequence_out:check_sequence_task", cpus=cpus, priority=0
    )
