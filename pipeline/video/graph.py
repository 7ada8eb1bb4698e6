"""The video graph: segments decode -> estimate -> upscale -> encode, then assemble.

A segment (keyframe-aligned frame range) is the unit of decode, encode and resume.
Decode runs at most ``video.max_frames_in_store`` frames ahead of the oldest frame not
yet encoded, so the store holds a window of frames, not the video. A decoded segment's
frames get their degradation estimates, then their regions. A segment's encode waits
for two things (``pipeline.runner.deps``): its decode and every one of its regions;
several encode at once, the driver flags each ``encoded`` and frees its frames. The
assemble waits for every segment's encode: it joins them with the copied
audio/subtitle streams into the staged file, which is renamed into place. A resume skips
encoded segments entirely.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pipeline.errors import unexpected
from pipeline.regions.graph import JobGraph
from pipeline.runner.stage import Call
from pipeline.store.outputs import replace_output
from pipeline.video.container import container_format
from pipeline.video.stages import AssembleStage, DecodeStage, EncodeStage, encoder_plan
from pipeline.video.tasks import Assemble, Assembled, Encoded, Segment, VideoJob

log = logging.getLogger(__name__)
SCRATCH_EVERY_S = 5.0


class VideoGraph(JobGraph):
    def __init__(self, plan, **kwargs) -> None:
        super().__init__(plan, **kwargs)
        segments = plan.segments
        self.ingest_units = len(segments)
        self.decode = DecodeStage.of(plan.config, plan.info.kind == "sequence")
        self.encode, self.assemble = self.output_stages()
        _, threads = encoder_plan(plan.config)
        self.video_job = VideoJob(
            store_url=plan.store_url,
            info=plan.info,
            video=plan.config.video,
            pix_fmt=plan.pix_fmt,
            container=container_format(str(plan.output_path)) if plan.fmt == "video" else "",
            threads=threads,
            remux=tuple(plan.remux),
            staged=str(self.staged),
            sequence=plan.sequence,
        )
        self.segment_of = [i for i, (a, b) in enumerate(segments) for _ in range(a, b)]
        self.segments_total = len(segments)
        self.segments_done = self.segments_at_start = 0
        self.encoded = [False] * len(segments)
        self.in_store = [False] * len(segments)
        self.to_decode: list[int] = []
        self.encode_nodes: dict[str, list[int]] = {}
        self.assemble_meter: Any = None
        self._scratch_t = 0.0
        self._window = 0

    def output_stages(self) -> tuple[Any, Any]:
        """(per segment, last step): encode and assemble (a sequence output: its own)."""
        return EncodeStage.of(self.plan.config), AssembleStage.of(self.plan.config)

    @property
    def context(self) -> VideoJob:
        return self.video_job

    def window_frames(self) -> int:
        """How far decode may run ahead of the oldest frame not yet encoded (worked out
        once: the encoders' count asks the cluster)."""
        if not self._window:
            v = self.plan.config.video
            encoders, _ = encoder_plan(self.plan.config)
            longest = max(b - a for a, b in self.plan.segments)
            self._window = v.max_frames_in_store or (encoders + 2) * longest
        return self._window

    def max_shot_frames(self) -> int:
        """A shot is closed once it spans the decode window less one segment: its end
        must be visible while its first segment is the oldest not yet encoded."""
        longest = max(b - a for a, b in self.plan.segments)
        return max(1, self.window_frames() - longest)

    def finished_frames(self) -> set[int]:
        encoded = self.store.encoded_mask()
        return {f for i, (a, b) in enumerate(self.plan.segments) if encoded[i] for f in range(a, b)}

    def segment_task(self, i: int) -> Segment:
        a, b = self.plan.segments[i]
        return Segment(i, a, b)

    # ---------------------------------------------------------------- begin
    def begin(self) -> None:
        plan = self.plan
        segments = plan.segments
        super().begin()
        store = self.store
        self.sweep_segment_temporaries()
        self.encoded = [bool(e) for e in store.encoded_mask()]
        flags = store.ingested_mask()
        for i, (a, b) in enumerate(segments):
            if self.encoded[i] and flags[i] and not plan.config.video.keep_frames:
                store.free_frames(a, b)  # killed between its flag and the free
                store.mark_ingested(i, False)
        self.segments_done = self.segments_at_start = sum(self.encoded)
        self.in_store = [bool(flags[i]) and not self.encoded[i] for i in range(len(segments))]
        self.to_decode = [i for i in range(len(segments)) if not flags[i] and not self.encoded[i]]
        log.info(
            "ingest: %d of %d segment(s) to decode into %s (%d already encoded)",
            len(self.to_decode),
            len(segments),
            plan.store_url,
            self.segments_done,
        )
        self.log_resume(self.segments_done, len(segments))
        self.recorder.stage("upscale")
        self.recorder.segments(self.segments_done, self.segments_total)
        self.start_upscale()
        self._segments_event()
        # What each segment's encode and the assemble wait for.
        regions_left = [0] * len(segments)
        for task in self.todo:
            regions_left[self.segment_of[task.frame]] += 1
        deps = self.deps
        for i in range(len(segments)):
            if self.encoded[i]:
                continue
            deps.expect(("decode", i), 0 if self.in_store[i] else 1)
            deps.expect(("upscale", i), regions_left[i])
            deps.expect(("encode", None))
        for i in range(len(segments)):
            if not self.encoded[i]:
                encode = self.call(self.encode, self.segment_task(i))
                self.release(deps.after(encode, [(name, i) for name in self.encode.after]))
        keys = [(name, None) for name in self.assemble.after]  # every segment's
        self.release(deps.after(self.start_assemble, keys))
        for i, (a, b) in enumerate(segments):
            if self.in_store[i]:
                self.arrived(range(a, b))
        self._update_scratch(force=True)

    def sweep_segment_temporaries(self) -> None:
        from pipeline.store.jobstore import is_local, local_path

        if not is_local(self.plan.store_url):
            return
        folder = local_path(self.plan.store_url) / "segments"
        for path in folder.glob("*.seg.tmp-*") if folder.exists() else []:
            path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- advance
    def oldest_unencoded(self) -> int:
        return next((i for i, done in enumerate(self.encoded) if not done), len(self.encoded))

    def advance(self) -> None:
        """Decode within the window (the segment after the oldest always: conditioning
        windows may need its first frames)."""
        if self.done_output or not self.to_decode:
            return
        plan = self.plan
        oldest = self.oldest_unencoded()
        start = plan.segments[oldest][0] if oldest < len(plan.segments) else 0
        limit = self.window_frames()
        while self.to_decode:
            i = self.to_decode[0]
            _, b = plan.segments[i]
            if i > oldest + 1 and b - start > limit:
                break
            self.to_decode.pop(0)
            self.emit(self.call(self.decode, self.segment_task(i)))

    def start_assemble(self) -> None:
        """Every segment is encoded: the last step."""
        self.recorder.stage("assemble")
        self.assemble_meter = self.events.stage("assemble", 1, "step")
        log.info("assemble: joining %d segment(s)", len(self.plan.segments))
        self.emit(self.call(self.assemble, Assemble(len(self.plan.segments))))

    # ----------------------------------------------------------------- settle
    def region_settled(self, task: Any) -> None:
        self.release(self.deps.done(("upscale", self.segment_of[task.frame])))

    def settled_other(self, call: Call, result: Any) -> None:
        if self.error is not None:
            return
        if call.stage is self.decode:
            self.decoded(call.task)
        elif call.stage is self.encode:
            self.encoded_segment(call.task, result)
        else:
            self.assembled(result)

    def decoded(self, seg: Segment) -> None:
        self.store.mark_ingested(seg.index)
        self.in_store[seg.index] = True
        self.arrived(range(seg.start, seg.end))
        self.release(self.deps.done(("decode", seg.index)))

    def encoded_segment(self, seg: Segment, result: Encoded) -> None:
        store, i = self.store, seg.index
        if result.node:
            self.encode_nodes.setdefault(result.node, []).append(i)
        store.mark_encoded(i)
        self.encoded[i] = True
        self.segments_done += 1
        if not self.plan.config.video.keep_frames:
            self.flags.forget(seg.start, seg.end)
            store.free_frames(seg.start, seg.end)
            store.mark_ingested(i, False)
            self.in_store[i] = False
        self.recorder.segments(self.segments_done, self.segments_total)
        self.recorder.frames_encoded(self.frames_encoded())
        self._segments_event()
        self._update_scratch()
        self.release(self.deps.done(("encode", None)))

    def assembled(self, result: Assembled) -> None:
        if self.encode_nodes:
            log.info(
                "encode: %d segment(s) encoded on %d node(s)",
                sum(len(v) for v in self.encode_nodes.values()),
                len(self.encode_nodes),
                extra={"encode_nodes": dict(self.encode_nodes)},
            )
        log.info(
            "publish: %d frames encoded in %d segment(s), %d packets copied",
            result.frames,
            result.segments,
            result.copied_packets,
        )
        self.publish()
        self.assemble_meter.advance()

    def publish(self) -> None:
        """Every segment is in the output: move it into place."""
        replace_output(self.staged, self.plan.output_path)
        self.done_output = True

    def frames_encoded(self) -> int:
        segments = self.plan.segments
        return sum(b - a for (a, b), e in zip(segments, self.encoded, strict=True) if e)

    def _segments_event(self) -> None:
        self.events.segments(self.segments_done, self.segments_total, self.frames_encoded())

    def _update_scratch(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._scratch_t >= SCRATCH_EVERY_S:
            self._scratch_t = now
            try:
                self.recorder.scratch(self.store.scratch_bytes())
            except OSError:  # advisory
                pass

    def summary_extra(self) -> dict[str, Any]:
        return {
            "segments_total": self.segments_total,
            "segments_run": self.segments_total - self.segments_at_start,
            "scratch_peak_bytes": self.recorder.record.get("scratch_peak_bytes"),
        }

    def failure_other(self, call: Call, exc: BaseException) -> BaseException:
        if call.stage is self.decode:
            return self.unreadable(exc)
        return unexpected(f"{call.stage.name} task", exc)
