"""Where Ray puts the work on a multi-node cluster, and what it reports back.

Region workers are spread across nodes with Ray's ``SPREAD`` scheduling strategy: a
job with one worker per GPU on nodes of one GPU each lands on every node anyway (the
GPU request decides), but with several GPUs a node, fractional ``--gpus-per-actor`` or
CPU workers, Ray's default policy packs actors onto as few nodes as fit, which shares
one node's memory bandwidth, disk and network while others idle. ``SPREAD`` is a
per-actor hint, so a replacement for a dead worker is scheduled like the first one,
and an autoscaler may add nodes mid-job. A placement group would reserve every
worker's bundle up front, all or nothing: a job asking for more GPUs than the cluster
has would wait forever instead of running on what is there, and replacements would
have to be pinned to their dead predecessor's bundle.

CPU stages (video decode tasks, the encoder actor) request CPUs so Ray places them on
nodes that have CPUs to give, not on a GPU node started with ``--num-cpus 0`` nor a
head kept free of work. GPU workers hold no CPU, so those CPUs stay for the CPU stages.
When the region workers themselves run on CPUs they leave one CPU spare (for the
driver-side tasks: ingest bands, publish), so the CPU stages then request none and
share the cores.

Each region result carries the Ray node id of the worker that wrote it; the driver
logs how many workers ran on how many nodes when the pool closes.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from typing import Any

log = logging.getLogger(__name__)

REGION_STRATEGY = "SPREAD"


def region_actor_options() -> dict[str, Any]:
    """Ray actor options for region workers, besides their resources."""
    return {"scheduling_strategy": REGION_STRATEGY}


def cpu_stage_options(workers_use_gpu: bool, actor: bool = False) -> dict[str, Any]:
    """Ray options for the CPU stages of a video job: decode tasks, and with ``actor``
    the encoder actor.

    A decode task takes one CPU (half of one on a one-CPU cluster). The encoder actor
    holds its request for the whole job and a batch runs several jobs at once, so it
    asks for a quarter of a CPU: enough to be placed on a node with CPUs, never enough
    for two jobs' encoders to starve every decode task. None when the region workers
    run on the CPUs (they leave one spare for the CPU stages)."""
    from pipeline.runner.cluster import cluster_cpus

    if not workers_use_gpu:
        return {"num_cpus": 0}
    share = 0.25 if actor else 1.0
    return {"num_cpus": min(share, cluster_cpus() / 2)}


def current_node() -> str | None:
    """The Ray node id of this process (None outside Ray: the local runner)."""
    ray = sys.modules.get("ray")  # in a Ray worker it is imported; never import it here
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


class Placement:
    """Which node each worker slot ran on, from the node ids in its region results."""

    def __init__(self) -> None:
        self.node_of: dict[int, str] = {}

    def record(self, slot: int, result: Any) -> None:
        node = result.get("node") if isinstance(result, dict) else None
        if node:
            self.node_of[slot] = node

    def by_node(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        for slot, node in sorted(self.node_of.items()):
            out[node].append(slot)
        return dict(out)

    def report(self) -> None:
        """Log ``upscale: N worker(s) ran on M node(s)`` (the ids in ``record.nodes``)."""
        nodes = self.by_node()
        if not nodes:
            return
        log.info(
            "upscale: %d worker(s) ran on %d node(s): %s",
            len(self.node_of),
            len(nodes),
            ", ".join(f"{node[:8]} x{len(slots)}" for node, slots in nodes.items()),
            extra={"nodes": nodes},
        )
