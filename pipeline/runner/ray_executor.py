"""The Ray executor: function stages as Ray tasks, actor stages on actor pools.

Function tasks are submitted by name (``stage.call_by_name``), so the driver never
imports what they run; Ray retries a task lost with its worker (``max_retries``), and
an error the task raised settles the call. Actor stages run on :class:`ActorPool`\\ s,
made on first use from the call's :class:`PoolSpec` and shared by every job naming the
same key: the actors load their model once, and a batch's regions interleave on them.

A failed actor call is settled with its error for the loop to retry. When the actor's
process died (killed, crashed, lost with its node, or by Ray's memory monitor) the pool
replaces it, once per death, and spares the other calls that were queued on it: an
actor runs its calls in order, so only the oldest unfinished one was running, and a
poison region that crashes its worker cannot use up its neighbours' retries.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from pipeline.runner.placement import Placement
from pipeline.runner.stage import Call, Hosted, PoolSpec, Settled, call_by_name
from pipeline.runner.tasks import JobContext

log = logging.getLogger(__name__)
IO_GROUP = "io"  # the actors' thread group for the io half of split calls
IO_THREADS = 4  # threads of a batched io half (its regions' halo reads run ahead)


@dataclass
class Flight:
    """A call in flight on a pool: where it runs and in which order it was sent."""

    call: Call
    slot: int = -1
    actor: Any = None
    seq: int = 0
    compute: Any = None  # a split call's compute ref (its io ref settles the call)
    batch: list[Call] | None = None  # calls sent as one (``Hosted.call_many``)


class ActorPool:
    """``spec.count`` actors of ``spec.target``, least-loaded first, with at most
    ``per_actor`` calls queued on each."""

    def __init__(self, spec: PoolSpec, per_actor: int) -> None:
        import ray

        self.spec, self.per_actor = spec, max(1, per_actor)
        # No Ray-side restarts or retries: the loop counts every failed attempt and the
        # pool replaces a dead actor itself, so retries stay bounded however one dies.
        options = {"max_restarts": 0, "max_task_retries": 0, **spec.options}
        # Split calls' io halves run on their own threads: one per call an actor may hold.
        hosted = ray.remote(concurrency_groups={IO_GROUP: self.per_actor})(Hosted)
        self._cls = hosted.options(**options)
        self.actors = [self._new_actor() for _ in range(max(1, spec.count))]
        self.load = [0] * len(self.actors)
        self.seq = 0
        self.placement = Placement()
        if spec.describe:
            log.info(spec.describe, len(self.actors))

    def _new_actor(self) -> Any:
        return self._cls.remote(self.spec.target, *self.spec.init, **self.spec.init_kwargs)

    def has_room(self) -> bool:
        return min(self.load) < self.per_actor

    def submit_many(self, calls: list[Call], arglist: list[tuple]) -> tuple[Any, Flight]:
        """Several calls as one actor call; settled one by one from its list."""
        slot = self.load.index(min(self.load))
        actor = self.actors[slot]
        self.seq += 1
        self.load[slot] += 1
        first = calls[0]
        if first.split is None:
            ref = actor.call_many.remote(first.method, arglist)
            return ref, Flight(first, slot, actor, self.seq, batch=calls)
        compute, io = first.split
        compute_ref = actor.call_many.remote(compute, arglist)
        ref = actor.call_many.options(concurrency_group=IO_GROUP).remote(io, arglist, IO_THREADS)
        return ref, Flight(first, slot, actor, self.seq, compute_ref, batch=calls)

    def submit(self, call: Call, args: tuple) -> tuple[Any, Flight]:
        slot = self.load.index(min(self.load))
        actor = self.actors[slot]
        self.seq += 1
        self.load[slot] += 1
        if call.split is None:
            ref = actor.call.remote(call.method, *args)
            return ref, Flight(call, slot, actor, self.seq)
        compute, io = call.split
        compute_ref = actor.call.remote(compute, *args)
        ref = actor.call.options(concurrency_group=IO_GROUP).remote(io, *args)
        return ref, Flight(call, slot, actor, self.seq, compute_ref)

    def replace(self, slot: int) -> None:
        import ray

        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._new_actor()
        log.warning("%s: worker %d died; started a replacement", self.spec.key.split("|")[0], slot)

    def close(self) -> None:
        import ray

        self.placement.report()
        for actor in self.actors:
            ray.kill(actor)


class RayExecutor:
    def __init__(self, per_actor: int = 2) -> None:
        self.per_actor = per_actor
        self.pools: dict[str, ActorPool] = {}
        self.owners: dict[str, int] = {}  # per-job pools: key -> id(job)
        self.flights: dict[Any, Flight] = {}
        self.spared: set[Any] = set()
        self._remotes: dict[tuple, Any] = {}
        self._puts: dict[int, tuple[Any, Any]] = {}  # id(obj) -> (obj, ObjectRef)
        self._put_by: dict[int, set[int]] = {}  # id(job) -> ids of its contexts
        self._packing: dict[str, list[Call]] = {}  # pool key -> calls to send as one
        self._settled: deque[Settled] = deque()  # a batch's results not handed out yet

    # ------------------------------------------------------------------ submit
    def _pool(self, spec: PoolSpec, call: Call) -> ActorPool:
        pool = self.pools.get(spec.key)
        if pool is None:
            pool = self.pools[spec.key] = ActorPool(spec, self.per_actor)
            if spec.per_job:
                self.owners[spec.key] = id(call.job)
        return pool

    def has_room(self, call: Call, in_flight_for_stage: int) -> bool:  # noqa: ARG002
        if call.pool is None:
            return True
        packing = self._packing.get(call.pool.key)
        if packing and len(packing) < packing[0].batch and call.split == packing[0].split:
            return True
        return self._pool(call.pool, call).has_room()

    def put(self, obj: Any) -> Any:
        """One object-store copy of a job's shared context (a ``JobContext``)."""
        import ray

        held = self._puts.get(id(obj))
        if held is None or held[0] is not obj:
            held = self._puts[id(obj)] = (obj, ray.put(obj))
        return held[1]

    def submit(self, call: Call) -> None:
        if call.pool is not None and call.batch > 1:
            packing = self._packing.setdefault(call.pool.key, [])
            if packing and (len(packing) >= packing[0].batch or call.split != packing[0].split):
                self._send_packed(call.pool.key)
                packing = self._packing.setdefault(call.pool.key, [])
            packing.append(call)
            if len(packing) >= call.batch:
                self._send_packed(call.pool.key)
            return
        self._send(call)

    def flush(self) -> None:
        """Send the calls being packed (the loop's submit round is over)."""
        for key in list(self._packing):
            self._send_packed(key)

    def _send_packed(self, key: str) -> None:
        calls = self._packing.pop(key, [])
        if not calls:
            return
        if len(calls) == 1:
            self._send(calls[0])
            return
        arglist = [self._args(c) for c in calls]
        ref, flight = self._pool(calls[0].pool, calls[0]).submit_many(calls, arglist)
        self.flights[ref] = flight

    def _args(self, call: Call) -> tuple[Any, Any]:
        """The call's (task, context), its job's context as one object-store copy."""
        context = call.context
        if isinstance(context, JobContext):
            context = self.put(context)
            self._put_by.setdefault(id(call.job), set()).add(id(call.context))
        return (call.task, context)

    def _send(self, call: Call) -> None:
        import ray

        args = self._args(call)
        if call.pool is not None:
            ref, flight = self._pool(call.pool, call).submit(call, args)
        else:
            st = call.stage
            key = (st.name, st.cpus, st.gpus, st.spread)
            if key not in self._remotes:
                extra = {"scheduling_strategy": "SPREAD"} if st.spread else {}
                self._remotes[key] = ray.remote(call_by_name).options(
                    num_cpus=st.cpus, num_gpus=st.gpus, max_retries=2, name=st.name, **extra
                )
            ref, flight = self._remotes[key].remote(st.target, *args), Flight(call)
        self.flights[ref] = flight

    def in_flight(self) -> int:
        calls = sum(len(f.batch) if f.batch else 1 for f in self.flights.values())
        return calls + sum(len(p) for p in self._packing.values()) + len(self._settled)

    def cancel_functions(self) -> None:
        import ray

        for ref, flight in list(self.flights.items()):
            if flight.call.pool is None:
                ray.cancel(ref, force=True)
                del self.flights[ref]

    # ------------------------------------------------------------------ settle
    def next(self, timeout: float) -> Settled | None:
        import ray

        if self._settled:
            return self._settled.popleft()
        if not self.flights:
            if timeout:
                import time

                time.sleep(min(timeout, 0.05))
            return None
        ready, _ = ray.wait(list(self.flights), num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        flight = self.flights.pop(ref)
        pool = self.pools.get(flight.call.pool.key) if flight.call.pool is not None else None
        if pool is not None:
            pool.load[flight.slot] -= 1
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            if flight.batch:
                return self._batch_failed(ref, flight, pool, exc)
            return self._failed(ref, flight, pool, exc)
        if flight.batch:
            return self._unpack(ref, flight, pool, result)
        self.spared.discard(ref)  # it had finished before its actor died
        if pool is not None:
            pool.placement.record(flight.slot, result)
        return Settled(flight.call, result=result)

    def _unpack(self, ref: Any, flight: Flight, pool: ActorPool | None, results: list) -> Settled:
        """A batch came back: each call settles with its own result or error."""
        self.spared.discard(ref)
        for call, (ok, value) in zip(flight.batch, results, strict=True):
            if ok:
                if pool is not None:
                    pool.placement.record(flight.slot, value)
                self._settled.append(Settled(call, result=value))
            else:
                self._settled.append(Settled(call, error=value))
        return self._settled.popleft()

    def _batch_failed(
        self, ref: Any, flight: Flight, pool: ActorPool | None, exc: Exception
    ) -> Settled:
        """The batch's actor died (or the batch call itself failed): which of its calls
        did it is unknown, so every one is spared and retried on its own."""
        self._failed(ref, flight, pool, exc)
        for call in flight.batch:
            call.batch = 1
            self._settled.append(Settled(call, error=exc, spared=True))
        return self._settled.popleft()

    def _failed(self, ref: Any, flight: Flight, pool: ActorPool | None, exc: Exception) -> Settled:
        import ray

        # RayTaskError: the worker raised. Anything else: the actor or its node died.
        dead = not isinstance(exc, ray.exceptions.RayTaskError)
        if pool is not None and dead and pool.actors[flight.slot] is flight.actor:
            self._blame(ref, flight)
            pool.replace(flight.slot)
        if ref in self.spared:
            self.spared.discard(ref)
            return Settled(flight.call, error=exc, spared=True)
        return Settled(flight.call, error=exc)

    def _blame(self, ref: Any, flight: Flight) -> None:
        """A dead actor failed every call queued on it, but only one call was running its
        model: spare the others an attempt. Calls run in order, so the culprit is the
        oldest whose model step had not finished: for split calls, the oldest whose
        compute ref failed (the io halves of older regions may still have been writing);
        else the oldest unfinished call."""
        mine = [(f.seq, r, f) for r, f in self.flights.items() if f.actor is flight.actor]
        calls = sorted([*mine, (flight.seq, ref, flight)], key=lambda c: c[0])
        culprit = next(
            (r for _, r, f in calls if f.compute is not None and _failed(f.compute)), None
        )
        if culprit is None:
            culprit = next((r for seq, r, _ in calls if seq <= flight.seq and _failed(r)), ref)
        self.spared.update(r for _, r, _ in calls if r is not culprit)

    # ------------------------------------------------------------------- pools
    def release(self, job: Any) -> None:
        """Free the per-job pools (a video's encoder) and shared arguments of ``job``."""
        for key in [k for k, owner in self.owners.items() if owner == id(job)]:
            self.owners.pop(key)
            pool = self.pools.pop(key)
            pool.close()
        for held in self._put_by.pop(id(job), ()):
            self._puts.pop(held, None)

    def close_pools(self, keep: str | None = None) -> None:
        """Free the workers (and their GPUs) of every pool but ``keep``."""
        for key in [k for k in self.pools if k != keep]:
            self.pools.pop(key).close()
            self.owners.pop(key, None)

    def close(self) -> None:
        self.close_pools()
        self._puts.clear()


def wait_all(refs: list[Any], cancel: Any = None) -> list[Any]:
    """``ray.get(refs)``, but cancelled with :class:`stopping.Terminated` on a stop
    (:class:`pipeline.errors.Cancelled` when the ``cancel`` token was cancelled)."""
    import ray

    from pipeline.runner import stopping

    pending = list(refs)
    while pending:
        if stopping.stop_requested(cancel):
            for ref in pending:
                ray.cancel(ref, force=True)
            stopping.check(cancel)
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
    return ray.get(refs)


def _failed(ref: Any) -> bool:
    """Whether a call of a dead actor failed (True) or had finished before (False)."""
    import ray

    ready, _ = ray.wait([ref], timeout=10)
    if not ready:
        return True
    try:
        ray.get(ref)
    except ray.exceptions.RayError:
        return True
    return False
