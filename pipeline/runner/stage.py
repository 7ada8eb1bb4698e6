"""Stages and calls: the units the loop schedules.

A :class:`Stage` declares what runs (a "module:function", or a "module:Class" for actor
stages, imported only in the process that runs it), its resources, how many of its
calls may be in flight and the task dataclass it takes (``takes``). Each stage of a job
is a subclass (``pipeline.video.stages``, ``pipeline.image.stages``,
``pipeline.regions.stages``). A :class:`Call` is one task of a stage for one job: a typed
task (what it works on) and the job's context (``pipeline.runner.tasks.JobContext``:
what every task of the job shares, sent to the workers once per job); the function or
actor method is called as ``target(task, context)``. Actor stages run on a
:class:`PoolSpec`: a set of actors built once (``setup``: the class loads its model in
its constructor) and shared by every job whose calls name the same pool key.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


def resolve(target: str) -> Any:
    """The object a "module:attribute" path names (imported here, on first use)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def call_by_name(target: str, *args: Any) -> Any:
    """Runs a function task where it is scheduled; the driver only knows its name."""
    return resolve(target)(*args)


def run_here(stage: Stage, *args: Any) -> Any:
    """Runs a function stage in this process (its module is imported here, now): for the
    few calls the driver makes itself, such as the weights lookup of the CLI."""
    return call_by_name(stage.target, *args)


class Hosted:
    """An actor built from a class path inside the worker process."""

    def __init__(self, target: str, *args: Any, **kwargs: Any) -> None:
        self.obj = resolve(target)(*args, **kwargs)
        self._contexts: dict[Any, Any] = {}  # a batch's job context refs, fetched once

    def _resolved(self, args: tuple) -> tuple:
        """Ray resolves only top-level ObjectRefs; a batch's context refs are nested."""
        import ray

        out = []
        for a in args:
            if isinstance(a, ray.ObjectRef):
                if a not in self._contexts:
                    if len(self._contexts) >= 8:
                        self._contexts.pop(next(iter(self._contexts)))
                    self._contexts[a] = ray.get(a)
                a = self._contexts[a]
            out.append(a)
        return tuple(out)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.obj, method)(*args)

    def call_many(self, method: str, arglist: list[tuple], threads: int = 1) -> list[tuple]:
        """Several calls of ``method`` in one actor call (small regions: the per-call
        cost of Ray is then paid once); each comes back as (True, result) or (False,
        its error), so one failure settles only its own call. ``threads`` > 1 runs them
        on that many threads in order (the io halves of split calls: each reads its
        halo, then waits for its compute half, which runs them in order)."""
        fn = getattr(self.obj, method)
        arglist = [self._resolved(args) for args in arglist]

        def one(args: tuple) -> tuple:
            try:
                return (True, fn(*args))
            except Exception as exc:  # noqa: BLE001 - settled as that call's error
                return (False, _sendable(exc))

        if threads > 1 and len(arglist) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(threads, len(arglist))) as pool:
                return list(pool.map(one, arglist))
        return [one(args) for args in arglist]


def _sendable(exc: Exception) -> Exception:
    """``exc``, or a plain RuntimeError with its text when it cannot be pickled back."""
    import pickle

    try:
        pickle.dumps(exc)
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function", or "module:Class" for an actor stage
    cpus: float = 1.0
    gpus: float = 0.0
    actor: bool = False
    max_in_flight: int = 0  # per job; 0: no bound (the executor's capacity decides)
    retries: int = 0  # failed attempts the loop repeats (Ray retries lost tasks itself)
    priority: int = 5  # lower is submitted first when several stages have work
    spread: bool = False  # Ray: spread the stage's tasks over the nodes (CPU-heavy work)
    takes: Any = None  # the task dataclass its calls carry (checked when a call is made)
    # The stages whose tasks on the same unit must all have settled before one of this
    # stage's tasks is released: a video segment's encode waits for its decode and its
    # regions (``pipeline.video.graph`` keys ``pipeline.runner.deps`` by these names).
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class PoolSpec:
    """Actors for an actor stage: ``count`` instances of ``target(*init)``."""

    key: str  # calls naming the same key share the pool (a batch's region workers)
    target: str
    init: tuple = ()
    init_kwargs: dict = field(default_factory=dict, hash=False, compare=False)
    count: int = 1
    per_job: bool = False  # freed when the job that made it ends (a video's encoder)
    options: dict = field(default_factory=dict, hash=False, compare=False)  # Ray options
    describe: str = ""  # the pool's log line when it starts


@dataclass
class Call:
    """One task of a stage for one job: ``stage.target(task, context)``."""

    job: Any  # the job graph that made it (pipeline.runner.loop.Graph)
    stage: Stage
    task: Any  # what it works on: an instance of ``stage.takes``
    context: Any = None  # the job's shared context (a JobContext), sent once per job
    method: str = "process"  # actor stages
    # Ray: the call as two methods on one actor, (compute, io): ``compute`` on the actor's
    # sequential thread, ``io`` (whose result settles the call) on its "io" thread group,
    # so an actor's I/O overlaps its model. The in-process runner calls ``method``.
    split: tuple[str, str] | None = None
    pool: PoolSpec | None = None  # actor stages
    first: bool = False  # queue ahead of the stage's other calls
    attempt: int = 0
    # Ray: at most this many consecutive calls of the same pool go as one actor call
    # (``Hosted.call_many``), each still settled on its own. The graph sizes it so
    # that every worker still gets work; a batch whose worker died is retried call by
    # call (``batch`` is then 1).
    batch: int = 1

    def __post_init__(self) -> None:
        takes = self.stage.takes
        if takes is not None and not isinstance(self.task, takes):
            raise TypeError(f"{self.stage.name} takes {takes.__name__}, not {self.task!r}")

    @property
    def args(self) -> tuple[Any, Any]:
        return (self.task, self.context)


@dataclass
class Settled:
    """A finished call: its result, or its error (``spared``: not its fault, redo it
    without counting an attempt)."""

    call: Call
    result: Any = None
    error: BaseException | None = None
    spared: bool = False
