"""The streaming loop: every job, image or video, one item or a batch, runs here.

A job is a :class:`Graph`: it hands out calls as their inputs become ready (segments
decoded, conditioning final, frames upscaled) and is told of each one settled. The loop
keeps one queue per stage (per pool for actor stages, so a batch's jobs share their
region workers in arrival order), submits while the executor has room and the stage's
bound allows, waits for the next result, and applies retries: a failed call is queued
again up to its stage's ``retries``, then its job ends with the job's own error while the
other jobs go on. On a stop request (SIGTERM) nothing new is submitted, function tasks
are cancelled, actor calls in flight settle for up to ``run.term_grace_s`` (their regions'
flags are written), and every running job ends with :class:`stopping.Terminated`. A
cancelled :class:`stopping.CancelToken` (the Python API) stops the loop it was given to
the same way, ending its jobs with :class:`pipeline.errors.Cancelled`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from pipeline.errors import reason
from pipeline.runner import stopping
from pipeline.runner.stage import Call, Settled

log = logging.getLogger(__name__)


class Graph(Protocol):
    """One job as the loop sees it."""

    error: BaseException | None

    def begin(self) -> None:
        """Driver-side set-up (open the store, find what is left); may raise."""

    def ready(self) -> list[Call]:
        """Calls that may run now and were not handed out before."""

    def settled(self, call: Call, result: Any) -> None:
        """A call succeeded (also called for calls that finish after the job ended)."""

    def failure(self, call: Call, exc: BaseException) -> BaseException:
        """The error that ends the job when ``call`` is out of attempts."""

    @property
    def finished(self) -> bool:
        """Every call settled and the job's output is complete."""

    def end(self, error: BaseException | None) -> None:
        """Driver-side tear-down; ``error`` is None on success."""


class Executor(Protocol):
    def has_room(self, call: Call, in_flight_for_stage: int) -> bool: ...

    def submit(self, call: Call) -> None: ...

    def flush(self) -> None: ...

    def next(self, timeout: float) -> Settled | None: ...

    def in_flight(self) -> int: ...

    def cancel_functions(self) -> None: ...

    def release(self, job: Any) -> None: ...

    def close(self) -> None: ...


def _queue_key(call: Call) -> Any:
    if call.pool is not None:
        return ("pool", call.pool.key)
    return ("stage", id(call.job), call.stage.name)


class Loop:
    def __init__(
        self,
        executor: Executor,
        term_grace_s: float,
        cancel: stopping.CancelToken | None = None,
    ) -> None:
        self.executor = executor
        self.cancel = cancel
        self.term_grace_s = term_grace_s
        self.queues: dict[Any, deque[Call]] = {}
        self.running: list[Graph] = []
        self.in_flight: dict[int, int] = {}  # id(graph) -> calls in flight
        self.stage_in_flight: dict[tuple[int, str], int] = {}
        self.ended: set[int] = set()

    # ------------------------------------------------------------------ graphs
    def run(
        self,
        graphs: Iterable[Graph],
        active: int = 1,
        may_start: Callable[[Graph, list[Graph]], bool] | None = None,
    ) -> None:
        """Run the graphs, at most ``active`` at once; ``may_start(graph, running)``
        can hold a graph back (a batch waits for a model change). Returns when every
        started graph has ended; graphs not started by a stop are left alone."""
        pending = deque(graphs)
        try:
            while pending or self.running:
                while pending and len(self.running) < active and not self._stopping():
                    if may_start is not None and not may_start(pending[0], self.running):
                        break
                    self._begin(pending.popleft())
                if not self.running:
                    if self._stopping() or not pending:
                        break
                    continue
                self._step()
        except BaseException as exc:
            # Ctrl-C: every running job ends as interrupted (flags kept, store unlocked,
            # temporaries removed); the caller exits 130. Anything else raised into the
            # loop (a scheduler's own stop exception, a bug) ends them the same way, so
            # that a program that goes on in this process can run the jobs again.
            for graph in list(self.running):
                self._end(graph, exc)
            raise

    def _stopping(self) -> bool:
        return stopping.stop_requested(self.cancel)

    def _begin(self, graph: Graph) -> None:
        try:
            graph.begin()
        except BaseException as exc:  # noqa: BLE001 - the graph's own error ends it
            self._end(graph, exc, started=False)
            if not isinstance(exc, Exception):
                raise
            return
        self.running.append(graph)
        self.in_flight[id(graph)] = 0

    def _end(self, graph: Graph, error: BaseException | None, started: bool = True) -> None:
        if started:
            self.running.remove(graph)
            self.ended.add(id(graph))
            for key, queue in list(self.queues.items()):
                kept = deque(c for c in queue if c.job is not graph)
                if len(kept) != len(queue):
                    self.queues[key] = kept
        graph.error = error
        self.executor.release(graph)
        try:
            graph.end(error)
        except BaseException as exc:  # a failing tear-down replaces a success
            if graph.error is None:
                graph.error = exc
            log.debug("ending a job failed", exc_info=True)

    def _fail(self, graph: Graph, exc: BaseException) -> None:
        if graph in self.running:
            self._end(graph, exc)

    # -------------------------------------------------------------------- step
    def _step(self) -> None:
        stop = self._stopping()
        for graph in list(self.running):
            try:
                for call in graph.ready():
                    self._enqueue(call)
                if graph.finished and not self.in_flight[id(graph)]:
                    self._end(graph, None)
            except Exception as exc:  # noqa: BLE001 - the graph's own failure
                self._fail(graph, exc)
        if stop:
            if self._stop_step():
                return
        else:
            self._submit()
            self._check_stalled()
        settled = self.executor.next(timeout=0.05)
        while settled is not None:
            self._settle(settled)
            settled = self.executor.next(timeout=0)

    def _enqueue(self, call: Call, front: bool = False) -> None:
        queue = self.queues.setdefault(_queue_key(call), deque())
        if front or call.first:
            queue.appendleft(call)
        else:
            queue.append(call)

    def _submit(self) -> None:
        keys = [k for k in self.queues if self.queues[k]]
        for key in sorted(keys, key=lambda k: self.queues[k][0].stage.priority):
            queue = self.queues[key]
            while queue:
                call = queue[0]
                stage_key = (id(call.job), call.stage.name)
                n = self.stage_in_flight.get(stage_key, 0)
                if call.stage.max_in_flight and n >= call.stage.max_in_flight:
                    break
                if not self.executor.has_room(call, n):
                    break
                queue.popleft()
                self.executor.submit(call)
                self.stage_in_flight[stage_key] = n + 1
                self.in_flight[id(call.job)] = self.in_flight.get(id(call.job), 0) + 1
        self.executor.flush()

    def _check_stalled(self) -> None:
        """A job with nothing queued, nothing in flight and nothing ready is a bug in its
        graph: end it with an error rather than wait forever."""
        idle = [g for g in self.running if not self.in_flight[id(g)] and not g.finished]
        if not idle:
            return
        queued = {id(c.job) for q in self.queues.values() for c in q}
        for graph in idle:
            if id(graph) not in queued:
                self._fail(graph, RuntimeError("the job stalled with work left (a bug)"))

    def _settle(self, s: Settled) -> None:
        call, graph = s.call, s.call.job
        stage_key = (id(graph), call.stage.name)
        self.stage_in_flight[stage_key] -= 1
        if id(graph) in self.in_flight:
            self.in_flight[id(graph)] -= 1
        live = graph in self.running
        if s.error is None:
            try:
                graph.settled(call, s.result)
            except Exception as exc:  # noqa: BLE001
                if live:
                    self._fail(graph, exc)
            return
        if not live or self._stopping():
            return
        if s.spared:
            log.warning("requeued %s: its worker died running another task", _name(call))
            self._enqueue(call, front=True)
            return
        if call.attempt >= call.stage.retries:
            error = graph.failure(call, s.error)
            if error.__cause__ is None:
                error.__cause__ = s.error
            self._fail(graph, error)
            return
        log.warning("retrying %s: %s", _name(call), reason(s.error))
        call.attempt += 1
        self._enqueue(call)

    # -------------------------------------------------------------------- stop
    def _stop_step(self) -> bool:
        """Drain after a stop request; True once every running job has ended."""
        self.queues.clear()
        self.executor.cancel_functions()
        busy = self.executor.in_flight()
        if busy and stopping.stopped_for_s(self.cancel) < self.term_grace_s:
            return False
        if busy:
            log.warning("stop: %d call(s) abandoned after %.0f s", busy, self.term_grace_s)
        for graph in list(self.running):
            self._end(graph, stopping.stop_error(self.cancel))
        return True


def _name(call: Call) -> str:
    from pipeline.runner.tasks import describe

    try:
        return describe(call.task)
    except (AttributeError, IndexError, TypeError):
        return f"{call.stage.name} {call.task}"
