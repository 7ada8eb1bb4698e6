"""Run jobs: plan, check, then their graphs on the runner's loop.

``run_job`` is the single-job entry point; ``pipeline.job.batch`` runs many jobs with the
same pieces: ``listener_for`` (events, or the CLI's bars), ``workers_up`` (the weights
checked where the workers run, then Ray), ``graph_for`` and ``run_graphs``, on one loop
and one executor, so their region workers are shared. The
executor is Ray's (tasks and actor pools) or, with ``run.runner=local``, this process.
Running the same job again resumes it: only regions without a ``done`` flag (and
segments not yet ingested) run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager, nullcontext
from typing import Any, TypeVar

from pipeline.config import JobConfig
from pipeline.errors import UserError
from pipeline.events import Listener
from pipeline.image.graph import ImageGraph
from pipeline.job.plan import plan_job
from pipeline.job.weights import weights_refusals, workers_here
from pipeline.regions.graph import JobGraph, Summary, UnreadableInput
from pipeline.regions.planned import Plan
from pipeline.results import Result
from pipeline.runner import stopping
from pipeline.runner.cluster import ray_runtime
from pipeline.runner.loop import Loop
from pipeline.video.graph import VideoGraph
from pipeline.video.sequence_graph import SequenceGraph

log = logging.getLogger(__name__)
K = TypeVar("K")

__all__ = ["Result", "Summary", "UnreadableInput", "plan_job", "run_job", "run_graphs"]


def log_probe(plan: Plan) -> None:
    info, lay = plan.info, plan.layout
    log.info(
        "probe: %s %dx%d%s, %d channel(s), %s -> %dx%d %s",
        info.kind,
        info.width,
        info.height,
        f", {lay.frames} frames" if plan.is_video else "",
        info.channels,
        info.dtype,
        info.width * lay.scale,
        info.height * lay.scale,
        plan.output_path.suffix.lstrip("."),
    )


def make_executor(cfg: JobConfig) -> Any:
    if cfg.run.runner == "local":
        from pipeline.runner.local import LocalExecutor

        return LocalExecutor()
    from pipeline.runner.ray_executor import RayExecutor

    return RayExecutor(per_actor=cfg.run.in_flight_per_actor)


def graph_for(plan: Plan, **kwargs: Any) -> JobGraph:
    if plan.fmt == "sequence":
        return SequenceGraph(plan, **kwargs)
    return (VideoGraph if plan.is_video else ImageGraph)(plan, **kwargs)


def run_graphs(
    graphs: Iterable[JobGraph],
    cfg: JobConfig,
    *,
    executor: Any = None,
    active: int = 1,
    may_start: Callable[[Any, list[Any]], bool] | None = None,
    cancel: stopping.CancelToken | None = None,
) -> None:
    """Run job graphs on one loop (Ray, when used, is up), on ``executor`` or on one
    made for the call and closed after it."""
    with closing(make_executor(cfg)) if executor is None else nullcontext(executor) as ex:
        Loop(ex, cfg.run.term_grace_s, cancel).run(graphs, active=active, may_start=may_start)


def run_job(
    input_path: str,
    output_path: str,
    cfg: JobConfig,
    *,
    overwrite: bool = False,
    restart: bool = False,
    progress: bool | Listener | None = None,
    cancel: stopping.CancelToken | None = None,
) -> Result:
    """Plan, check and run one job; raises its error (``pipeline.errors``).

    ``progress``: a listener of ``pipeline.events``, or True for the CLI's bars;
    ``cancel``: a token another thread may cancel (the job stops as after SIGTERM)."""
    t0 = time.perf_counter()
    events, bars = listener_for(progress)
    with closing(bars) if bars is not None else nullcontext():
        return _run(input_path, output_path, cfg, overwrite, restart, events, cancel, t0)


def listener_for(
    progress: bool | Listener | None, stages: tuple[str, ...] = ("upscale", "publish")
) -> tuple[Listener | None, Any]:
    """The events' listener for ``progress`` (True: the CLI's bars for ``stages``), and
    the bars to close after the run (None when not drawn here)."""
    if progress is True:
        from pipeline.bars import BarRenderer

        bars = BarRenderer(stages)
        return bars, bars
    return (progress if callable(progress) else None), None


def _run(
    input_path: str,
    output_path: str,
    cfg: JobConfig,
    overwrite: bool,
    restart: bool,
    events: Listener | None,
    cancel: stopping.CancelToken | None,
    t0: float,
) -> Result:
    plan = plan_job(input_path, output_path, cfg, overwrite)
    log_probe(plan)

    def refuse(refusals: dict[int, str]) -> None:
        if refusals:
            raise UserError(refusals[0])

    with workers_up({0: plan}, plan.config, refuse, cancel):
        graph = graph_for(plan, restart=restart, events=events, t0=t0)
        run_graphs([graph], plan.config, cancel=cancel)
    if graph.error is not None:
        raise graph.error
    if graph.summary is None:  # stopped before the job began
        raise stopping.stop_error(cancel)
    return graph.summary


@contextmanager
def workers_up(
    plans: Mapping[K, Plan],
    cfg: JobConfig,
    on_refusals: Callable[[dict[K, str]], None],
    cancel: stopping.CancelToken | None = None,
) -> Iterator[None]:
    """Ray up for the run (none with ``run.runner=local``), once the plans' weights are
    checked where the workers run: before Ray starts when that is this machine, so a
    refusal costs no Ray start, else on the cluster once it is up. ``on_refusals`` hears
    the one-line refusal of each plan whose weights are not usable (a single job raises
    it, a batch fails those items)."""
    here = workers_here(cfg)
    if here:
        on_refusals(weights_refusals(plans))
    stopping.check(cancel)
    with nullcontext() if cfg.run.runner == "local" else ray_runtime(cfg.run.address):
        if not here:
            on_refusals(weights_refusals(plans, cancel))
        yield
