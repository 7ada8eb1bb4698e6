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
from pipeline.errors import Cancelled, Interrupted, JobFailed, UserError, cause
from pipeline.events import JobEvents, Listener, StageMeter
from pipeline.job.conditioning import Conditioning
from pipeline.job.plan import Plan
from pipeline.job.record import ModelBusy, Progress
from pipeline.job.regions import REGION_SPLIT, region_pool, region_stages
from pipeline.pure.tiling import plan_regions
from pipeline.results import Result
from pipeline.runner.stage import Call
from pipeline.runner.tasks import EstimateTask, JobRef, RegionTask, describe
from pipeline.store.jobstore import JobStore, open_for_job, remove_store
from pipeline.store.outputs import sweep_partials

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
    where = describe(task)
    reason = cause(exc).removeprefix(f"{where} failed: ")
    return JobFailed(
        f"{where} failed {attempts} time(s): {reason}; the job store "
        f"{store_url} is kept, so a fixed rerun resumes"
    )


class JobGraph:
    """One job's lifecycle on the loop; subclasses add ingest and publish stages.

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
        self.job = JobRef(
            plan.store_url, plan.config, plan.model.size_multiple, plan.model.context_px
        )
        self.error: BaseException | None = None
        self.summary: Summary | None = None
        self.busy = ModelBusy()
        self.done_output = False
        self.store: JobStore | None = None
        self.store_removed = False  # after success (or a damaged input) without --keep-store
        self.upscale_meter: StageMeter | None = None
        self.frames_resumed = 0
        self._out: list[Call] = []

    # ---------------------------------------------------------------- lifecycle
    def begin(self) -> None:
        plan = self.plan
        if self.on_change is not None:
            self.on_change(self, "begin")
        self.store = open_for_job(
            plan.store_url, plan.spec, plan.layout, self.restart, self.ingest_units
        )
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
        self.by_frame: dict[int, list[RegionTask]] = {}
        for task in self.todo:
            self.by_frame.setdefault(task.frame, []).append(task)
        self.left = np.zeros(self.frames, np.int64)  # regions still to do, per frame
        for f, tasks in self.by_frame.items():
            self.left[f] = len(tasks)
        self.regions_left = len(self.todo)
        self.estimates_left = 0
        self.waiting: set[int] = set()  # in the store, conditioning not final yet
        cfg = plan.config.model
        fixed = parse_degradation(cfg.degradation) if cfg.degradation is not None else None
        window = cfg.degradation_window if plan.is_video else 0
        self.cond: Conditioning | None = None
        self._cond_args = (self.frames, plan.model.needs_degradation, window, fixed)
        self._cond_kwargs = {
            "mode": degradation_mode(cfg, plan.is_video),
            "max_shot": self.max_shot_frames(),
            "threshold": cfg.shot_threshold,
        }

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
        self.advance()
        out, self._out = self._out, []
        return out

    def advance(self) -> None:
        """Move the job on from what has settled: queue new calls (``emit``)."""
        raise NotImplementedError

    def emit(self, call: Call) -> None:
        self._out.append(call)

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
        if store is None:
            return
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
        self.cleanup(error)
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

    def cleanup(self, error: BaseException | None) -> None:
        """Subclasses: drop temporaries after a failure."""

    def summary_extra(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------- region stages
    def start_upscale(self) -> None:
        """The upscale stage begins (its regions resumed from the store count as done)."""
        self.upscale_meter = self.events.stage(
            "upscale", self.regions_total, "region", done=self.regions_total - len(self.todo)
        )

    def start_conditioning(self) -> None:
        if self.cond is None:
            assert self.store is not None
            self.cond = Conditioning(self.store, *self._cond_args, **self._cond_kwargs)

    def arrived(self, frames: range) -> None:
        """These frames' pixels are in the store: estimate what is missing, then
        release the frames whose conditioning is final."""
        self.start_conditioning()
        assert self.cond is not None
        missing = self.cond.missing(frames)
        for i in range(0, len(missing), ESTIMATE_BATCH):
            task = EstimateTask(tuple(missing[i : i + ESTIMATE_BATCH]))
            self.estimates_left += 1
            self.emit(
                Call(self, self.estimate_stage, (task, self.job), task, pool=self.pool, first=True)
            )
        self.waiting.update(frames)
        self.release()

    def release(self) -> None:
        assert self.cond is not None
        for f in self.cond.release(sorted(self.waiting)):
            self.waiting.discard(f)
            for task in self.by_frame.get(f, []):
                self.emit(
                    Call(
                        self,
                        self.upscale_stage,
                        (task, self.job),
                        task,
                        pool=self.pool,
                        split=REGION_SPLIT,
                    )
                )

    def settled(self, call: Call, result: Any) -> None:
        if call.stage is self.upscale_stage:
            task = call.address
            if self.store_removed:
                return
            self.store.mark_done(task.frame, task.row, task.col)
            if self.error is not None:
                return
            self.busy.record(result)
            self.recorder.model_busy(self.busy.fraction())
            self.left[task.frame] -= 1
            self.regions_left -= 1
            if self.upscale_meter is not None:
                self.upscale_meter.advance()
            self.recorder.regions_done()
        elif call.stage is self.estimate_stage:
            if self.error is not None:
                return
            self.estimates_left -= 1
            self.cond.record(call.address.frames, result)
            self.release()
        else:
            self.settled_other(call, result)

    def settled_other(self, call: Call, result: Any) -> None:
        raise NotImplementedError

    def failure(self, call: Call, exc: BaseException) -> BaseException:
        if call.pool is self.pool:
            return region_failed(self.plan.store_url, call.address, call.attempt + 1, exc)
        return self.failure_other(call, exc)

    def failure_other(self, call: Call, exc: BaseException) -> BaseException:
        return exc

    def unreadable(self, exc: BaseException) -> UnreadableInput:
        return UnreadableInput(
            f"{self.plan.input_path} could not be decoded: {cause(exc)} "
            "(is the file damaged or truncated?)"
        )
