"""Region scheduling: an actor pool with bounded work in flight and bounded retries.

The driver hands out region addresses; a region's ``done`` flag is set here, after the
actor that wrote its shard returned. A failed call (the model raised, the actor's
process died, its node went away) puts the task back in the queue, at most
``run.region_retries`` times; an actor that died is replaced by a fresh one, so a
preempted worker costs only the regions it had in flight. ``LocalRegions`` runs the
same worker in this process, sequentially, for the local runner.
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from typing import Any

from pipeline.cluster import cluster_cpus, cluster_gpus
from pipeline.errors import JobFailed
from pipeline.placement import Placement, region_actor_options
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
    """The last meaningful line of a (Ray-wrapped) exception; one line for a dead actor."""
    ray = sys.modules.get("ray")  # no Ray errors without Ray (the local runner)
    text = str(getattr(exc, "cause", None) or exc)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    if (
        ray is not None
        and isinstance(exc, ray.exceptions.RayActorError)
        and not isinstance(exc, ray.exceptions.RayTaskError)
    ):
        if exc.actor_init_failed:
            return f"its worker could not start: {last}"
        if exc.preempted:
            return "its worker's node was preempted"
        return "its worker process died (killed, crashed or lost with its node)"
    return last


def is_region(task: Any) -> bool:
    return hasattr(task, "row")


def describe(task: Any) -> str:
    if is_region(task):
        return f"frame {task.frame} region (row {task.row}, col {task.col})"
    return f"degradation estimate of frames {task.frames[0]}..{task.frames[-1]}"


def failed(plan: Plan, task: Any, attempts: int, exc: BaseException) -> JobFailed:
    where = describe(task)
    reason = cause(exc).removeprefix(f"{where} failed: ")
    return JobFailed(
        f"{where} failed {attempts} time(s): {reason}; the job store "
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
            factory=plan.model.factory,
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
        # No Ray-side restarts or task retries: handle() counts every failed attempt and
        # replaces a dead actor itself, so retries stay bounded however a worker dies.
        options: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0}
        options.update(region_actor_options())  # spread over nodes (pipeline/placement)
        if self.use_gpu:
            # GPU actors take no CPU slot so CPU stages (ingest, encode) keep the cores.
            options.update(num_gpus=cfg.run.gpus_per_actor, num_cpus=0)
        else:
            options.update(num_cpus=1)
        self._cls = ray.remote(RegionWorker).options(**options)
        self.actors = [self._new_actor() for _ in range(count)]
        self.pending: deque[tuple[Any, int]] = deque()
        # ref -> (actor slot, task, attempt, actor handle, submission number)
        self.in_flight: dict[Any, tuple[int, Any, int, Any, int]] = {}
        self.spared: set[Any] = set()  # failed with a dead actor they did not kill
        self.submitted = 0
        self.load = [0] * count
        self.placement = Placement()
        log.info(
            "upscale: %d actor(s) on %s, tile %d px, overlap %d px",
            count,
            "GPU" if self.use_gpu else "CPU",
            cfg.tiling.tile_px,
            cfg.tiling.overlap_px,
        )

    def _new_actor(self) -> Any:
        p = self.plan
        return self._cls.remote(
            p.store_url,
            p.config,
            p.model.size_multiple,
            p.model.context_px,
            factory=p.model.factory,
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
            actor = self.actors[idx]
            self.submitted += 1
            ref = actor.process.remote(task)
            self.in_flight[ref] = (idx, task, attempt, actor, self.submitted)
            self.load[idx] += 1

    def refs(self) -> list[Any]:
        return list(self.in_flight)

    def handle(self, ref: Any) -> tuple[Any, Any] | None:
        """Settle a finished call: (task, result) when it succeeded (a region's flag is
        set), None when it was queued again for a retry."""
        import ray

        idx, task, attempt, actor, seq = self.in_flight.pop(ref)
        self.load[idx] -= 1
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            # RayTaskError: the worker raised. Anything else (the actor or its node
            # died, Ray's memory monitor killed it): replace the actor, once per death.
            dead = not isinstance(exc, ray.exceptions.RayTaskError)
            if dead and self.actors[idx] is actor:
                self._blame(ref, actor, seq)
                self._replace(idx)
            if ref in self.spared:
                self.spared.discard(ref)
                log.warning("requeued %s: its worker died running another task", describe(task))
                self.pending.appendleft((task, attempt))
                return None
            if attempt >= self.plan.config.run.region_retries:
                raise failed(self.plan, task, attempt + 1, exc) from exc
            log.warning("retrying %s: %s", describe(task), cause(exc))
            self.pending.append((task, attempt + 1))
            return None
        self.spared.discard(ref)  # it had finished before its actor died
        self.placement.record(idx, result)
        if is_region(task):
            self.store.mark_done(task.frame, task.row, task.col)
        return task, result

    def _blame(self, ref: Any, actor: Any, seq: int) -> None:
        """A dead actor failed every task queued on it, but ran only one: the oldest
        unfinished (an actor runs its calls in order). Spare the others an attempt, so
        a poison region that crashes its worker cannot use up its neighbours' retries."""
        import ray

        others = sorted((s, r) for r, (_, _, _, a, s) in self.in_flight.items() if a is actor)
        culprit = ref
        for s, r in others:
            if s > seq:
                break
            ready, _ = ray.wait([r], timeout=10)
            try:
                if ready:
                    ray.get(r)
                    continue  # finished before the death
            except ray.exceptions.RayError:
                pass
            culprit = r
            break
        self.spared.update(r for _, r in others if r is not culprit)
        if culprit is not ref:
            self.spared.add(ref)

    def _replace(self, idx: int) -> None:
        import ray

        ray.kill(self.actors[idx], no_restart=True)
        self.actors[idx] = self._new_actor()
        log.warning("upscale: worker %d died; started a replacement", idx)

    def close(self) -> None:
        import ray

        self.placement.report()
        for actor in self.actors:
            ray.kill(actor)
