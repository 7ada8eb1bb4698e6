"""Region scheduling: one actor pool shared by every job of a run, bounded work in
flight, bounded retries.

Each job registers with the pool and gets a :class:`JobChannel`: it adds region and
estimate tasks, and receives them back settled, in completion order. A dispatcher
thread keeps the actors fed from one queue, so the regions of several jobs interleave
(a batch keeps its GPUs busy while one item encodes) and the model loads once per actor.
A region's ``done`` flag is set here, after the actor that wrote its shard returned. A
failed call (the model raised, the actor's process died, its node went away) puts the
task back in the queue, at most ``run.region_retries`` times, then fails that job only;
an actor that died is replaced by a fresh one, so a preempted worker costs only the
regions it had in flight. On a stop request (SIGTERM) the pool hands out nothing new,
lets the calls in flight settle for up to ``run.term_grace_s``, then ends every job with
``Terminated``. ``LocalRegions`` runs the same worker in this process, sequentially,
for the local runner.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections import deque
from typing import Any

from pipeline import stopping
from pipeline.cluster import cluster_cpus, cluster_gpus
from pipeline.config import ModelConfig, RunConfig
from pipeline.errors import JobFailed
from pipeline.models import ModelSpec
from pipeline.placement import Placement, region_actor_options
from pipeline.plan import Plan
from pipeline.store import JobStore

log = logging.getLogger(__name__)


def run_tasks(plan: Plan, fn, calls: list[tuple], num_cpus: float = 1) -> list[Any]:
    """Run ``fn(*call)`` for every call as Ray tasks (in this process for the local
    runner). Waits in short slices so a stop request cancels the tasks and raises."""
    import ray

    if plan.config.run.runner == "local":
        return [fn(*args) for args in calls]
    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(fn)
    refs = [remote.remote(*args) for args in calls]
    return wait_all(refs)


def wait_all(refs: list[Any]) -> list[Any]:
    """``ray.get(refs)``, but cancelled with :class:`stopping.Terminated` on a stop."""
    import ray

    pending = list(refs)
    while pending:
        if stopping.STOP.is_set():
            for ref in pending:
                ray.cancel(ref, force=True)
            stopping.check()
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
    return ray.get(refs)


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


def job_ref(plan: Plan) -> Any:
    from workers.region_worker import JobRef

    return JobRef(plan.store_url, plan.config, plan.model.size_multiple, plan.model.context_px)


class LocalRegions:
    """Sequential, in-process: the same worker code without Ray (tests, debugging)."""

    def __init__(self, plan: Plan, store: JobStore) -> None:
        from workers.region_worker import RegionWorker

        self.plan, self.store = plan, store
        self.job = job_ref(plan)
        self.worker = RegionWorker(
            plan.config.model, factory=plan.model.factory, threads=int(cluster_cpus())
        )

    def run(self, task: Any) -> Any:
        """Run a region (its flag set after the write) or an estimate (its scores)."""
        retries = self.plan.config.run.region_retries
        for attempt in range(retries + 1):
            stopping.check()
            try:
                result = self.worker.process(task, self.job)
                break
            except Exception as exc:
                if attempt == retries:
                    raise failed(self.plan, task, attempt + 1, exc) from exc
                log.warning("retrying %s: %s", describe(task), cause(exc))
        if is_region(task):
            self.store.mark_done(task.frame, task.row, task.col)
        return result


class JobChannel:
    """One job's handle on the shared pool."""

    def __init__(self, pool: RegionPool, plan: Plan, store: JobStore, ref: Any) -> None:
        self.pool, self.plan, self.store, self.ref = pool, plan, store, ref
        self.results: queue.Queue = queue.Queue()
        self.error: BaseException | None = None

    def add(self, tasks: list[Any], first: bool = False) -> None:
        """Queue tasks; ``first`` puts them ahead (estimates unblock whole frames)."""
        self.pool._add(self, tasks, first)

    def next(self, timeout: float = 0.2) -> tuple[Any, Any] | None:
        """The next settled (task, result), or None after ``timeout`` s. Raises the
        job's failure (``JobFailed``, ``Terminated``) once it has one."""
        try:
            item = self.results.get(timeout=timeout)
        except queue.Empty:
            item = None
        if self.error is not None:
            raise self.error
        return item

    def close(self) -> None:
        self.pool._forget(self)


class RegionPool:
    """Region worker actors for one model config, fed from one queue by a thread."""

    def __init__(self, run: RunConfig, model: ModelSpec, model_config: ModelConfig, expected: int):
        import ray

        from workers.region_worker import RegionWorker

        self.run_config, self.model, self.model_config = run, model, model_config
        self.use_gpu = cluster_gpus() > 0 and run.gpus_per_actor > 0
        if run.actors:
            count = run.actors
        elif self.use_gpu:
            count = int(cluster_gpus() // run.gpus_per_actor)
        else:
            count = int(cluster_cpus())
        count = max(1, min(count, expected))
        # No Ray-side restarts or task retries: _handle counts every failed attempt and
        # replaces a dead actor itself, so retries stay bounded however a worker dies.
        options: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0}
        options.update(region_actor_options())  # spread over nodes (pipeline/placement)
        if self.use_gpu:
            # GPU actors take no CPU slot so CPU stages (ingest, encode) keep the cores.
            options.update(num_gpus=run.gpus_per_actor, num_cpus=0)
        else:
            # The pool lives for the whole run (a batch shares it), so CPU workers must
            # leave one CPU to the CPU stages (ingest, publish) or those never schedule.
            spare = max(0.0, cluster_cpus() - 1.0)
            options.update(num_cpus=round(min(1.0, spare / count), 4))
        self._cls = ray.remote(RegionWorker).options(**options)
        self.actors = [self._new_actor() for _ in range(count)]
        self.pending: deque[tuple[JobChannel, Any, int]] = deque()
        # ref -> (actor slot, channel, task, attempt, actor handle, submission number)
        self.in_flight: dict[Any, tuple[int, JobChannel, Any, int, Any, int]] = {}
        self.spared: set[Any] = set()  # failed with a dead actor they did not kill
        self.submitted = 0
        self.load = [0] * count
        self.channels: list[JobChannel] = []
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._closed = False
        self.placement = Placement()  # before the dispatcher thread records into it
        self._thread = threading.Thread(target=self._loop, name="region-pool", daemon=True)
        self._thread.start()
        log.info(
            "upscale: %d actor(s) on %s, model %s",
            count,
            "GPU" if self.use_gpu else "CPU",
            model.name,
        )

    def _new_actor(self) -> Any:
        return self._cls.remote(self.model_config, factory=self.model.factory)

    # ------------------------------------------------------------------ jobs' side
    def register(self, plan: Plan, store: JobStore) -> JobChannel:
        import ray

        channel = JobChannel(self, plan, store, ray.put(job_ref(plan)))
        with self._lock:
            self.channels.append(channel)
        return channel

    def _add(self, channel: JobChannel, tasks: list[Any], first: bool) -> None:
        with self._lock:
            if channel.error is not None:
                return
            if first:
                self.pending.extendleft((channel, t, 0) for t in reversed(tasks))
            else:
                self.pending.extend((channel, t, 0) for t in tasks)
        self._wake.set()

    def _forget(self, channel: JobChannel) -> None:
        with self._lock:
            if channel in self.channels:
                self.channels.remove(channel)
            self.pending = deque(p for p in self.pending if p[0] is not channel)

    def _fail(self, channel: JobChannel, exc: BaseException) -> None:
        """End one job: drop its queued tasks; its calls in flight still settle."""
        with self._lock:
            if channel.error is None:
                channel.error = exc
            self.pending = deque(p for p in self.pending if p[0] is not channel)
        channel.results.put(None)  # wake its consumer

    # ---------------------------------------------------------------- dispatcher
    def _loop(self) -> None:
        import ray

        try:
            while not self._closed:
                with self._lock:
                    if stopping.STOP.is_set():
                        self._stop_step()
                    else:
                        self._fill()
                    refs = list(self.in_flight)
                if not refs:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                ready, rest = ray.wait(refs, num_returns=1, timeout=0.05)
                if ready and rest:
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
                for ref in ready:
                    self._handle(ref)
        except BaseException as exc:  # a bug here must not leave jobs waiting forever
            log.exception("region pool stopped")
            for channel in list(self.channels):
                self._fail(channel, exc)

    def _stop_step(self) -> None:
        grace = self.run_config.term_grace_s
        if self.in_flight and stopping.stopped_for_s() < grace:
            return
        if self.in_flight:
            log.warning(
                "stop: %d region call(s) abandoned after %.0f s", len(self.in_flight), grace
            )
        for channel in list(self.channels):
            self._fail(
                channel,
                stopping.Terminated(
                    "stopped by SIGTERM; the job store is kept: run the same command to resume"
                ),
            )

    def _fill(self) -> None:
        limit = self.run_config.in_flight_per_actor
        while self.pending and min(self.load) < limit:
            idx = self.load.index(min(self.load))
            channel, task, attempt = self.pending.popleft()
            actor = self.actors[idx]
            self.submitted += 1
            ref = actor.process.remote(task, channel.ref)
            self.in_flight[ref] = (idx, channel, task, attempt, actor, self.submitted)
            self.load[idx] += 1

    def _handle(self, ref: Any) -> None:
        """Settle a finished call: a success goes to its job (a region's flag is set
        first); a failure is queued again or, out of retries, fails its job."""
        import ray

        with self._lock:
            idx, channel, task, attempt, actor, seq = self.in_flight.pop(ref)
            self.load[idx] -= 1
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            self._failed_call(ref, exc, idx, channel, task, attempt, actor, seq)
            return
        self.spared.discard(ref)  # it had finished before its actor died
        self.placement.record(idx, result)
        if is_region(task):
            channel.store.mark_done(task.frame, task.row, task.col)
        if channel.error is None:
            channel.results.put((task, result))

    def _failed_call(self, ref, exc, idx, channel, task, attempt, actor, seq) -> None:
        import ray

        # RayTaskError: the worker raised. Anything else (the actor or its node died,
        # Ray's memory monitor killed it): replace the actor, once per death.
        dead = not isinstance(exc, ray.exceptions.RayTaskError)
        if dead and self.actors[idx] is actor:
            self._blame(ref, actor, seq)
            self._replace(idx)
        if channel.error is not None:
            return
        if ref in self.spared:
            self.spared.discard(ref)
            log.warning("requeued %s: its worker died running another task", describe(task))
            with self._lock:
                self.pending.appendleft((channel, task, attempt))
            return
        if attempt >= self.run_config.region_retries:
            error = failed(channel.plan, task, attempt + 1, exc)
            error.__cause__ = exc
            self._fail(channel, error)
            return
        log.warning("retrying %s: %s", describe(task), cause(exc))
        with self._lock:
            self.pending.append((channel, task, attempt + 1))

    def _blame(self, ref: Any, actor: Any, seq: int) -> None:
        """A dead actor failed every task queued on it, but ran only one: the oldest
        unfinished (an actor runs its calls in order). Spare the others an attempt, so
        a poison region that crashes its worker cannot use up its neighbours' retries."""
        import ray

        with self._lock:
            others = sorted(
                (s, r) for r, (_, _, _, _, a, s) in self.in_flight.items() if a is actor
            )
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
        with self._lock:
            self.actors[idx] = self._new_actor()
        log.warning("upscale: worker %d died; started a replacement", idx)

    def placement(self) -> list[dict[str, Any]]:
        """Each actor's device, pid and Ray node (waits for the models to load)."""
        import ray

        return ray.get([a.ping.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        self.placement.report()
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        for actor in self.actors:
            ray.kill(actor)
