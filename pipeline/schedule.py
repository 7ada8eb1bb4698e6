"""Region scheduling: an actor pool with bounded work in flight and bounded retries.

The driver hands out region addresses; a region's ``done`` flag is set here, after the
actor that wrote its shard returned. ``LocalRegions`` runs the same worker in this
process, sequentially, for the local runner.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from pipeline.cluster import cluster_cpus, cluster_gpus
from pipeline.errors import JobFailed
from pipeline.plan import Plan
from pipeline.store import JobStore

log = logging.getLogger(__name__)


def run_tasks(plan: Plan, fn, calls: list[tuple], num_cpus: float = 1) -> list[Any]:
    """Run ``fn(*call)`` for every call as Ray tasks (in this process for the local runner)."""
    import ray

    if plan.config.run.runner == "local":
        return [fn(*args) for args in calls]
    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(fn)
    return ray.get([remote.remote(*args) for args in calls])


def cause(exc: BaseException) -> str:
    """The last meaningful line of a (Ray-wrapped) exception."""
    text = str(getattr(exc, "cause", None) or exc)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def is_region(task: Any) -> bool:
    return hasattr(task, "row")


def describe(task: Any) -> str:
    if is_region(task):
        return f"frame {task.frame} region (row {task.row}, col {task.col})"
    return f"degradation estimate of frames {task.frames[0]}..{task.frames[-1]}"


def failed(plan: Plan, task: Any, attempts: int, exc: BaseException) -> JobFailed:
    return JobFailed(
        f"{describe(task)} failed {attempts} time(s): {cause(exc)}; the job store "
        f"{plan.store_url} is kept, so a fixed rerun resumes"
    )


class LocalRegions:
    """Sequential, in-process: the same worker code without Ray (tests, debugging)."""

    def __init__(self, plan: Plan, store: JobStore) -> None:
        from workers.region_worker import RegionWorker

        self.plan, self.store = plan, store
        self.worker = RegionWorker(
            plan.store_url,
            plan.config,
            plan.model.size_multiple,
            plan.model.context_px,
            threads=int(cluster_cpus()),
        )

    def run(self, task: Any) -> Any:
        """Run a region (its flag set after the write) or an estimate (its scores)."""
        retries = self.plan.config.run.region_retries
        for attempt in range(retries + 1):
            try:
                result = self.worker.process(task)
                break
            except Exception as exc:
                if attempt == retries:
                    raise failed(self.plan, task, attempt + 1, exc) from exc
                log.warning("retrying %s: %s", describe(task), cause(exc))
        if is_region(task):
            self.store.mark_done(task.frame, task.row, task.col)
        return result


class RegionPool:
    """Region worker actors fed from a queue; ``handle`` settles one finished call."""

    def __init__(self, plan: Plan, store: JobStore, expected: int):
        import ray

        from workers.region_worker import RegionWorker

        self.plan, self.store = plan, store
        cfg = plan.config
        self.use_gpu = cluster_gpus() > 0 and cfg.run.gpus_per_actor > 0
        if cfg.run.actors:
            count = cfg.run.actors
        elif self.use_gpu:
            count = int(cluster_gpus() // cfg.run.gpus_per_actor)
        else:
            count = int(cluster_cpus())
        count = max(1, min(count, expected))
        options: dict[str, Any] = {"max_restarts": 2, "max_task_retries": 0}
        if self.use_gpu:
            # GPU actors take no CPU slot so CPU stages (ingest, encode) keep the cores.
            options.update(num_gpus=cfg.run.gpus_per_actor, num_cpus=0)
        else:
            options.update(num_cpus=1)
        cls = ray.remote(RegionWorker).options(**options)
        self.actors = [
            cls.remote(plan.store_url, cfg, plan.model.size_multiple, plan.model.context_px)
            for _ in range(count)
        ]
        self.pending: deque[tuple[Any, int]] = deque()
        self.in_flight: dict[Any, tuple[int, Any, int]] = {}
        self.load = [0] * count
        log.info(
            "upscale: %d actor(s) on %s, tile %d px, overlap %d px",
            count,
            "GPU" if self.use_gpu else "CPU",
            cfg.tiling.tile_px,
            cfg.tiling.overlap_px,
        )

    def add(self, tasks: list[Any], first: bool = False) -> None:
        """Queue tasks; ``first`` puts them ahead (estimates unblock whole frames)."""
        if first:
            self.pending.extendleft((t, 0) for t in reversed(tasks))
        else:
            self.pending.extend((t, 0) for t in tasks)

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.in_flight)

    def fill(self) -> None:
        limit = self.plan.config.run.in_flight_per_actor
        while self.pending and min(self.load) < limit:
            idx = self.load.index(min(self.load))
            task, attempt = self.pending.popleft()
            self.in_flight[self.actors[idx].process.remote(task)] = (idx, task, attempt)
            self.load[idx] += 1

    def refs(self) -> list[Any]:
        return list(self.in_flight)

    def handle(self, ref: Any) -> tuple[Any, Any] | None:
        """Settle a finished call: (task, result) when it succeeded (a region's flag is
        set), None when it was queued again for a retry."""
        import ray

        idx, task, attempt = self.in_flight.pop(ref)
        self.load[idx] -= 1
        try:
            result = ray.get(ref)
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
            if attempt >= self.plan.config.run.region_retries:
                raise failed(self.plan, task, attempt + 1, exc) from exc
            log.warning("retrying %s: %s", describe(task), cause(exc))
            self.pending.append((task, attempt + 1))
            return None
        if is_region(task):
            self.store.mark_done(task.frame, task.row, task.col)
        return task, result

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
