"""The video path's stages: decode segments, encode them, assemble the file.

Each is a :class:`Stage` subclass: its target, the task it takes
(``pipeline.video.tasks``) and, from ``of(cfg)``, its resources on this cluster.

decode   video segment (keyframe-aligned) -> ``input`` (CPUs where the CPUs are)
encode   one video segment's frames -> its packets      (CPU tasks, several at once)
         (a frame sequence output: -> its frame files, ``sequence_write_stage``)
assemble the segments' packets + copied streams -> file (one CPU task)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import JobConfig
from pipeline.regions.stages import workers_use_gpu
from pipeline.runner.cluster import cluster_cpus
from pipeline.runner.placement import cpu_stage_options
from pipeline.runner.stage import Stage
from pipeline.video.tasks import Assemble, Segment


def encoder_plan(cfg: JobConfig) -> tuple[int, int]:
    """(encoders at once, threads each). Threads: ``video.encoder_threads``, else up to 4
    (x264/x265 scale well to about that per stream, and several streams scale on).
    Encoders: ``video.encoders``, else as many as the cluster's CPUs hold with one
    encoder's worth left for decode and the driver (at least 1)."""
    cpus = int(cluster_cpus())
    threads = cfg.video.encoder_threads or max(1, min(4, cpus))
    count = cfg.video.encoders or max(1, cpus // threads - 1)
    return count, threads


def _cpu_task_cpus(cfg: JobConfig) -> float:
    return cpu_stage_options(workers_use_gpu(cfg))["num_cpus"]


@dataclass(frozen=True)
class DecodeStage(Stage):
    """A segment (keyframe-aligned) -> ``input``: one CPU each where the CPUs are; at
    most half the cluster's CPUs decode at once, so the encoder and the driver keep
    theirs. A frame sequence's segments decode file by file
    (``pipeline.video.sequence_in``)."""

    name: str = "decode"
    target: str = "pipeline.video.decode:decode_segment"
    takes: Any = Segment
    priority: int = 1
    spread: bool = True

    @classmethod
    def of(cls, cfg: JobConfig, sequence: bool = False) -> DecodeStage:
        target = "pipeline.video.sequence_in:decode_sequence_segment" if sequence else cls.target
        return cls(
            target=target,
            cpus=_cpu_task_cpus(cfg),
            max_in_flight=max(1, int(cluster_cpus()) // 2),
        )


@dataclass(frozen=True)
class EncodeStage(Stage):
    """A segment's frames -> its packets (CPU work: H100/H200 have no NVENC), several at
    once. Each asks for its threads' CPUs (at most half the cluster's) when the workers
    are on GPUs, so Ray spreads encoders over the nodes' CPUs; none when the workers
    hold the CPUs."""

    name: str = "encode"
    target: str = "pipeline.video.encode:encode_segment"
    takes: Any = Segment
    after: tuple[str, ...] = ("decode", "upscale")  # of its segment
    priority: int = 0
    spread: bool = True

    @classmethod
    def of(cls, cfg: JobConfig) -> EncodeStage:
        count, threads = encoder_plan(cfg)
        cpus = min(float(threads), cluster_cpus() / 2) if workers_use_gpu(cfg) else 0.0
        return cls(cpus=cpus, max_in_flight=count)


@dataclass(frozen=True)
class AssembleStage(Stage):
    """The segments' packets + the copied streams -> the staged file (one CPU task)."""

    name: str = "assemble"
    target: str = "pipeline.video.assemble:assemble"
    takes: Any = Assemble
    after: tuple[str, ...] = ("encode",)  # of every segment
    priority: int = 0

    @classmethod
    def of(cls, cfg: JobConfig) -> AssembleStage:
        return cls(cpus=_cpu_task_cpus(cfg))


@dataclass(frozen=True)
class WriteFramesStage(Stage):
    """A frame sequence output's segment writers (one file per frame), in the encoders'
    place and number."""

    name: str = "encode"
    target: str = "pipeline.video.sequence_out:write_frames"
    takes: Any = Segment
    after: tuple[str, ...] = ("decode", "upscale")  # of its segment
    priority: int = 0
    spread: bool = True

    @classmethod
    def of(cls, cfg: JobConfig) -> WriteFramesStage:
        count, _ = encoder_plan(cfg)
        cpus = min(1.0, cluster_cpus() / 2) if workers_use_gpu(cfg) else 0.0
        return cls(cpus=cpus, max_in_flight=count)


@dataclass(frozen=True)
class CheckFramesStage(Stage):
    """A frame sequence output's last step: every file is in place."""

    name: str = "assemble"
    target: str = "pipeline.video.sequence_out:check_frames"
    takes: Any = Assemble
    after: tuple[str, ...] = ("encode",)  # of every segment
    priority: int = 0

    @classmethod
    def of(cls, cfg: JobConfig) -> CheckFramesStage:
        return cls(cpus=_cpu_task_cpus(cfg))
