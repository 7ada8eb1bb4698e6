"""What every job graph shares: its store and progress, and the region stages.

A frame's regions are handed out once its pixels are in the store and its
conditioning is final (S3Diff's degradation scores, estimated by the same workers); a
region's ``done`` flag is written here, on the driver, after the worker that wrote its
shard returned.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from pipeline.config import degradation_mode, parse_degradation
from pipeline.errors import Cancelled, Interrupted, JobFailed, UserError, cause, reason
from pipeline.events import JobEvents, Listener, StageMeter
from pipeline.pure.tiling import plan_regions
from pipeline.regions.conditioning import Conditioning
from pipeline.regions.planned import Plan
from pipeline.regions.stages import (
    ESTIMATE_METHOD,
    REGION_SPLIT,
    UPSCALE_METHOD,
    calls_batch,
    region_pool,
    region_stages,
    regions_per_call,
)
from pipeline.results import Result
from pipeline.runner.deps import Dependencies
from pipeline.runner.stage import Call
from pipeline.runner.tasks import EstimateTask, JobRef, RegionTask, describe
from pipeline.store.jobstore import DoneFlags, JobStore, open_for_job, remove_store
from pipeline.store.outputs import discard_temp, sweep_partials, temp_name
from pipeline.store.progress import ModelBusy, Progress

log = logging.getLogger(__name__)
ESTIMATE_BATCH = 32  # frames per estimate call


class UnreadableInput(UserError):
    """The input passed the probe but its pixels could not be decoded (damaged file)."""


Summary = Result  # the name the runner's callers knew it by


def resume_line(
    regions_done: int, regions_total: int, segments_done: int = 0, segments_total: int = 0
) -> str | None:
    """What a resumed job takes over from its store, in one line (None: nothing)."""
    if not regions_done and not segments_done:
        return None
    line = f"resume: {regions_done} of {regions_total} regions done"
    if segments_total:
        line += f", {segments_done} of {segments_total} segments encoded"
    return line


def region_failed(store_url: str, task: Any, attempts: int, exc: BaseException) -> JobFailed:
    """The one place a region's or estimate's failure is located: the worker raises the
    plain cause, named here from the call's address."""
    return JobFailed(
        f"{describe(task)} failed {attempts} time(s): {reason(exc)}; the job store "
        f"{store_url} is kept, so a fixed rerun resumes"
    )


class JobGraph:
    """One job's lifecycle on the loop; subclasses add ingest and publish stages.

    Construction leaves the graph complete: its stages, its context (what every task of
    the job shares, sent once: ``self.context``, and the region workers' ``self.job``)
    and empty bookkeeping. ``begin`` (run by the loop when the job starts) opens the
    store and reads what is left to do; ``ready`` hands out the calls whose
    dependencies (``pipeline.runner.deps``) are met; ``settled`` ticks them off.

    ``expected_regions`` sizes the region pool (a batch's total); ``on_regions(n, resumed)``
    hears of regions done, resumed ones first (a batch's bar); ``events`` hears the
    job's progress events (``pipeline.events``)."""

    ingest_units = 1

    def __init__(
        self,
        plan: Plan,
        *,
        restart: bool = False,
        events: Listener | None = None,
        expected_regions: int = 0,
        on_regions: Any = None,
        t0: float | None = None,
        on_change: Any = None,
    ) -> None:
        """``on_change(graph, "begin" | "end")`` hears when the job starts and ends."""
        self.plan = plan
        self.on_change = on_change
        self.restart, self.on_regions = restart, on_regions
        self.events = JobEvents(events, str(plan.output_path))
        self.t0 = time.perf_counter() if t0 is None else t0
        lay = plan.layout
        self.frames = lay.frames
        self.regions_total = lay.frames * int(np.prod(lay.regions))
        self.expected = expected_regions or self.regions_total
        self.estimate_stage, self.upscale_stage = region_stages(plan.config.run.region_retries)
        self.pool = region_pool(plan.config, plan.model, self.expected)
        self.degradation_mode = degradation_mode(plan.config.model, plan.is_video)
        self.job = JobRef(
            plan.store_url,
            plan.config,
            plan.model.size_multiple,
            plan.model.context_px,
            signatures=self.degradation_mode == "shot",
        )
        self.staged = temp_name(plan.output_path)  # the output until it is complete
        self.region_batch = regions_per_call(lay.height, lay.width, lay.region_lr_px)
        self.deps = Dependencies()
        self.error: BaseException | None = None
        self.summary: Summary | None = None
        self.busy = ModelBusy()
        self.done_output = False
        self.store: JobStore | None = None
        self.store_removed = False  # after success (or a damaged input) without --keep-store
        self.upscale_meter: StageMeter | None = None
        self.recorder: Progress | None = None
        self.flags: DoneFlags | None = None
        self.frames_resumed = 0
        self.unreported = 0  # regions settled, their flags not written yet
        self.todo: list[RegionTask] = []
        self.by_frame: dict[int, list[RegionTask]] = {}
        self.regions_left = 0
        self.waiting: set[int] = set()  # in the store, conditioning not final yet
        self.cond: Conditioning | None = None
        self._out: list[Call] = []

    # ---------------------------------------------------------------- lifecycle
    def begin(self) -> None:
        """Open the store and read what is left: the regions to run, the progress."""
        plan = self.plan
        if self.on_change is not None:
            self.on_change(self, "begin")
        self.open_store()
        sweep_partials(plan.output_path)
        done = self.store.done_mask()
        skipped = self.finished_frames()
        self.frames_resumed = len(skipped)
        self.todo = [
            RegionTask(r.frame, r.row, r.col)
            for f in range(self.frames)
            if f not in skipped
            for r in plan_regions(
                f, plan.layout.height, plan.layout.width, plan.layout.region_lr_px
            )
            if not done[r.frame, r.row, r.col]
        ]
        self.recorder = Progress(
            plan.store_url,
            plan.input_path,
            str(plan.output_path),
            self.regions_total,
            self.regions_total - len(self.todo),
            self.frames,
            self.on_regions,
        )
        for task in self.todo:
            self.by_frame.setdefault(task.frame, []).append(task)
        self.regions_left = len(self.todo)

    def open_store(self) -> None:
        plan = self.plan
        self.store = open_for_job(
            plan.store_url, plan.spec, plan.layout, self.restart, self.ingest_units
        )
        self.flags = DoneFlags(self.store)

    def conditioning(self) -> Conditioning:
        """The job's conditioning, opened on the store at first use."""
        if self.cond is None:
            assert self.store is not None
            plan, cfg = self.plan, self.plan.config.model
            fixed = parse_degradation(cfg.degradation) if cfg.degradation is not None else None
            self.cond = Conditioning(
                self.store,
                self.frames,
                plan.model.needs_degradation,
                cfg.degradation_window if plan.is_video else 0,
                fixed,
                mode=self.degradation_mode,
                max_shot=self.max_shot_frames(),
                threshold=cfg.shot_threshold,
            )
        return self.cond

    def max_shot_frames(self) -> int:
        """The longest shot shot-mode conditioning may wait for (video: its window)."""
        return self.frames

    def log_resume(self, segments_done: int = 0, segments_total: int = 0) -> None:
        line = resume_line(
            self.regions_total - len(self.todo), self.regions_total, segments_done, segments_total
        )
        if line:
            log.info(line)

    def finished_frames(self) -> set[int]:
        """Frames whose output is final whatever their flags say (encoded video)."""
        return set()

    def ready(self) -> list[Call]:
        self.report_regions()
        self.advance()
        out, self._out = self._out, []
        return out

    def report_regions(self) -> None:
        """Write the flags of the regions settled since the last step (one store write),
        then show them as done: the bar and the progress record never count a region
        whose flag a killed driver would lose."""
        if self.flags is None or not self.unreported:
            return
        self.flags.flush()
        count, self.unreported = self.unreported, 0
        if self.upscale_meter is not None:
            self.upscale_meter.advance(count)
        self.recorder.regions_done(count)

    def advance(self) -> None:
        """Move the job on from what has settled: queue new calls (``emit``)."""

    def emit(self, call: Call) -> None:
        self._out.append(call)

    def call(self, stage: Any, task: Any, **kwargs: Any) -> Call:
        """A call of one of this job's stages, with the job's context."""
        return Call(self, stage, task, kwargs.pop("context", self.context), **kwargs)

    @property
    def context(self) -> Any:
        """What every task of the job shares (subclasses: their ``JobContext``)."""
        return self.job

    def release(self, items: list[Any]) -> None:
        """Hand out what the dependencies released: calls, or driver steps to run."""
        for item in items:
            if isinstance(item, Call):
                self.emit(item)
            else:
                item()

    @property
    def finished(self) -> bool:
        return self.done_output

    def end(self, error: BaseException | None) -> None:
        try:
            self._end(error)
        finally:
            if self.on_change is not None:
                self.on_change(self, "end")

    def _end(self, error: BaseException | None) -> None:
        plan, store = self.plan, self.store
        if store is None or self.recorder is None:
            return
        if error is None:
            self.report_regions()
        elif self.flags is not None and not self.store_removed:
            self.flags.flush()
        drop = False
        if error is None:
            self.recorder.finish("done")
        elif isinstance(error, Cancelled):
            self.recorder.finish("cancelled", str(error))
        elif isinstance(error, Interrupted):
            self.recorder.finish("terminated", str(error))
        elif isinstance(error, KeyboardInterrupt):
            self.recorder.finish("interrupted")
        else:
            self.recorder.finish("failed", cause(error))
            # Nothing worth resuming from a damaged input: leave no store behind.
            drop = isinstance(error, UnreadableInput) and not store.done_mask().any()
        if error is not None:
            discard_temp(self.staged, plan.output_path)
        store.unlock()
        if not plan.config.store.keep and (error is None or drop):
            remove_store(plan.store_url)
            self.store_removed = True
        if error is None:
            lay = plan.layout
            self.summary = Result(
                output=str(plan.output_path),
                seconds=time.perf_counter() - self.t0,
                out_megapixels=lay.frames * lay.out_shape[1] * lay.out_shape[2] / 1e6,
                frames=lay.frames,
                regions_total=self.regions_total,
                regions_run=len(self.todo),
                store_url=plan.store_url,
                model_busy=self.busy.fraction(),
                input=plan.input_path,
                frames_resumed=self.frames_resumed,
                model=plan.config.model.name,
                weights=plan.config.model.weights,
                store_kept=not self.store_removed,
                **self.summary_extra(),
            )

    def summary_extra(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------- region stages
    def start_upscale(self) -> None:
        """The upscale stage begins (its regions resumed from the store count as done)."""
        self.upscale_meter = self.events.stage(
            "upscale", self.regions_total, "region", done=self.regions_total - len(self.todo)
        )

    def arrived(self, frames: range) -> None:
        """These frames' pixels are in the store: estimate what is missing, then
        release the frames whose conditioning is final."""
        cond = self.conditioning()
        missing = cond.missing(frames)
        for i in range(0, len(missing), ESTIMATE_BATCH):
            task = EstimateTask(tuple(missing[i : i + ESTIMATE_BATCH]))
            self.emit(
                self.call(
                    self.estimate_stage,
                    task,
                    context=self.job,
                    method=ESTIMATE_METHOD,
                    pool=self.pool,
                    first=True,
                )
            )
        self.waiting.update(frames)
        self.release_frames()

    def release_frames(self) -> None:
        """Hand out the regions of the waiting frames whose conditioning is final; small
        regions go several to a worker call, as long as every worker still gets some."""
        cond = self.conditioning()
        tasks = []
        for f in cond.release(sorted(self.waiting)):
            self.waiting.discard(f)
            tasks.extend(self.by_frame.pop(f, []))
        batch = calls_batch(len(tasks), self.pool.count, self.region_batch)
        for task in tasks:
            self.emit(
                self.call(
                    self.upscale_stage,
                    task,
                    context=self.job,
                    pool=self.pool,
                    method=UPSCALE_METHOD,
                    split=REGION_SPLIT,
                    batch=batch,
                )
            )

    def region_settled(self, task: RegionTask) -> None:
        """Subclasses: what a region done releases."""

    def settled(self, call: Call, result: Any) -> None:
        if call.stage is self.upscale_stage:
            task = call.task
            if self.store_removed or self.flags is None or self.recorder is None:
                return
            self.flags.add(task.frame, task.row, task.col)
            if self.error is not None:  # the job has ended: keep the flag for a resume
                self.flags.flush()
                return
            self.busy.record(result)
            self.recorder.model_busy(self.busy.fraction())
            self.regions_left -= 1
            self.unreported += 1
            if not self.regions_left:
                self.report_regions()  # the stage's bar is full before the next starts
            self.region_settled(task)
        elif call.stage is self.estimate_stage:
            if self.error is not None:
                return
            self.conditioning().record(call.task.frames, result)
            self.release_frames()
        else:
            self.settled_other(call, result)

    def settled_other(self, call: Call, result: Any) -> None:
        raise NotImplementedError

    def failure(self, call: Call, exc: BaseException) -> BaseException:
        if call.pool is self.pool:
            return region_failed(self.plan.store_url, call.task, call.attempt + 1, exc)
        return self.failure_other(call, exc)

    def failure_other(self, call: Call, exc: BaseException) -> BaseException:
        return exc

    def unreadable(self, exc: BaseException) -> UnreadableInput:
        return UnreadableInput(
            f"{self.plan.input_path} could not be decoded: {cause(exc)} "
            "(is the file damaged or truncated?)"
        )
