"""Stages and calls: the units the loop schedules.

A :class:`Stage` declares what runs (a "module:function", or a "module:Class" for actor
stages, imported only in the process that runs it), its resources and how many of its
calls may be in flight. A :class:`Call` is one task of a stage for one job: the
function's (or actor method's) arguments and the address it works on. Actor stages run
on a :class:`PoolSpec`: a set of actors built once (``setup``: the class loads its model
in its constructor) and shared by every job whose calls name the same pool key.
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

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.obj, method)(*args)


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
    """One task of a stage for one job."""

    job: Any  # the job graph that made it (pipeline.runner.loop.Graph)
    stage: Stage
    args: tuple = ()
    address: Any = None  # what it works on (a task, a segment, a block)
    method: str = "process"  # actor stages
    # Ray: the call as two methods on one actor, (compute, io): ``compute`` on the actor's
    # sequential thread, ``io`` (whose result settles the call) on its "io" thread group,
    # so an actor's I/O overlaps its model. The in-process runner calls ``method``.
    split: tuple[str, str] | None = None
    pool: PoolSpec | None = None  # actor stages
    first: bool = False  # queue ahead of the stage's other calls
    attempt: int = 0


@dataclass
class Settled:
    """A finished call: its result, or its error (``spared``: not its fault, redo it
    without counting an attempt)."""

    call: Call
    result: Any = None
    error: BaseException | None = None
    spared: bool = False
