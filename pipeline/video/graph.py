"""The video graph: segments decode -> estimate -> upscale -> encode, then assemble.

A segment (keyframe-aligned frame range) is the unit of decode, encode and resume.
Decode runs at most ``video.max_frames_in_store`` frames ahead of the oldest frame not
yet encoded, so the store holds a window of frames, not the video. A decoded segment's
frames get their degradation estimates, then their regions; once every region of a
segment is done, an encode task turns its frames into a segment file (several encode at
once), the driver flags it ``encoded`` and frees its frames. When every segment is
encoded, one assemble task joins them with the copied audio/subtitle streams, and the
file is renamed into place. A resume skips encoded segments entirely.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any

from pipeline.errors import unexpected
from pipeline.job.graph import JobGraph
from pipeline.runner.stage import Call
from pipeline.store.outputs import discard_temp, replace_output, temp_name
from pipeline.video.container import container_format
from pipeline.video.stages import assemble_stage, decode_stage, encode_stage, encoder_plan

log = logging.getLogger(__name__)
SCRATCH_EVERY_S = 5.0


class VideoGraph(JobGraph):
    def __init__(self, plan, **kwargs) -> None:
        super().__init__(plan, **kwargs)
        self.ingest_units = len(plan.segments)
        self.decode = decode_stage(plan.config, plan.info.kind == "sequence")
        self.encode, self.threads = encode_stage(plan.config)
        self.assemble = assemble_stage(plan.config)

    def window_frames(self) -> int:
        """How far decode may run ahead of the oldest frame not yet encoded."""
        v = self.plan.config.video
        if v.max_frames_in_store:
            return v.max_frames_in_store
        encoders, _ = encoder_plan(self.plan.config)
        longest = max(b - a for a, b in self.plan.segments)
        return (encoders + 2) * longest

    def max_shot_frames(self) -> int:
        """A shot is closed once it spans the decode window less one segment: its end
        must be visible while its first segment is the oldest not yet encoded."""
        longest = max(b - a for a, b in self.plan.segments)
        return max(1, self.window_frames() - longest)

    def finished_frames(self) -> set[int]:
        encoded = self.store.encoded_mask()
        return {f for i, (a, b) in enumerate(self.plan.segments) if encoded[i] for f in range(a, b)}

    def begin(self) -> None:
        plan = self.plan
        segments = plan.segments
        super().begin()
        store = self.store
        self.tmp = temp_name(plan.output_path)
        self.sweep_segment_temporaries()
        self.encoded = store.encoded_mask()
        flags = store.ingested_mask()
        for i, (a, b) in enumerate(segments):
            if self.encoded[i] and flags[i] and not plan.config.video.keep_frames:
                store.free_frames(a, b)  # killed between its flag and the free
                store.mark_ingested(i, False)
        self.segments_total = len(segments)
        self.segments_done = self.segments_at_start = int(self.encoded.sum())
        self.to_decode = [i for i in range(len(segments)) if not flags[i] and not self.encoded[i]]
        self.decoding: set[int] = set()
        self.encoding: set[int] = set()
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
        self.start_conditioning()
        self.in_store = [bool(flags[i]) and not self.encoded[i] for i in range(len(segments))]
        for i, (a, b) in enumerate(segments):
            if self.in_store[i]:
                self.arrived(range(a, b))
        self.starts = [a for a, _ in segments]
        self.seg_left = [int(self.left[a:b].sum()) for a, b in segments]
        self.candidates = {
            i for i in range(len(segments)) if self.in_store[i] and not self.seg_left[i]
        }
        self.assembling = False
        self.encode_nodes: dict[str, list[int]] = {}
        self._scratch_t = 0.0
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
        for i, done in enumerate(self.encoded):
            if not done:
                return i
        return len(self.encoded)

    def advance(self) -> None:
        if self.done_output or self.assembling:
            return
        plan = self.plan
        oldest = self.oldest_unencoded()
        if oldest == len(plan.segments):
            self.assembling = True
            self.recorder.stage("assemble")
            self.assemble_meter = self.events.stage("assemble", 1, "step")
            log.info("assemble: joining %d segment(s)", len(plan.segments))
            self.emit(Call(self, self.assemble, self.assemble_args(), address="assemble"))
            return
        # Decode within the window (the segment after the oldest always: conditioning
        # windows may need its first frames).
        start = plan.segments[oldest][0]
        limit = self.window_frames()
        while self.to_decode:
            i = self.to_decode[0]
            a, b = plan.segments[i]
            if i > oldest + 1 and b - start > limit:
                break
            self.to_decode.pop(0)
            self.decoding.add(i)
            self.emit(Call(self, self.decode, (plan.info, plan.store_url, a, b), address=i))
        # Encode every segment whose regions are all done.
        for i in sorted(self.candidates):
            self.candidates.discard(i)
            a, b = plan.segments[i]
            self.encoding.add(i)
            self.emit(Call(self, self.encode, self.encode_args(i, a, b), address=i))

    def encode_args(self, i: int, a: int, b: int) -> tuple[Any, ...]:
        """The encode call's arguments for segment ``i`` (frames [a, b))."""
        plan = self.plan
        fmt = container_format(str(plan.output_path))
        v = plan.config.video
        return (plan.store_url, plan.info, v, i, a, b, plan.pix_fmt, fmt, self.threads)

    def assemble_args(self) -> tuple[Any, ...]:
        plan = self.plan
        return (
            plan.store_url,
            plan.info,
            plan.config.video,
            str(self.tmp),
            list(plan.remux),
            plan.pix_fmt,
            len(plan.segments),
            self.threads,
        )

    # ----------------------------------------------------------------- settle
    def settled(self, call: Call, result: Any) -> None:
        super().settled(call, result)
        if call.stage is self.upscale_stage and self.error is None:
            i = bisect.bisect_right(self.starts, call.address.frame) - 1
            self.seg_left[i] -= 1
            if not self.seg_left[i] and self.in_store[i]:
                self.candidates.add(i)

    def settled_other(self, call: Call, result: Any) -> None:
        if self.error is not None:
            return
        store, plan = self.store, self.plan
        if call.stage is self.decode:
            i = call.address
            store.mark_ingested(i)
            self.decoding.discard(i)
            self.in_store[i] = True
            a, b = plan.segments[i]
            self.arrived(range(a, b))
            if not self.seg_left[i]:
                self.candidates.add(i)
        elif call.stage is self.encode:
            i = call.address
            if result.get("node"):
                self.encode_nodes.setdefault(result["node"], []).append(i)
            store.mark_encoded(i)
            self.encoded[i] = True
            self.encoding.discard(i)
            self.segments_done += 1
            if not plan.config.video.keep_frames:
                a, b = plan.segments[i]
                store.free_frames(a, b)
                store.mark_ingested(i, False)
                self.in_store[i] = False
            self.recorder.segments(self.segments_done, self.segments_total)
            self.recorder.frames_encoded(self.frames_encoded())
            self._segments_event()
            self._update_scratch()
        else:
            if self.encode_nodes:
                log.info(
                    "encode: %d segment(s) encoded on %d node(s)",
                    sum(len(v) for v in self.encode_nodes.values()),
                    len(self.encode_nodes),
                    extra={"encode_nodes": dict(self.encode_nodes)},
                )
            log.info(
                "publish: %d frames encoded in %d segment(s), %d packets copied",
                result["frames"],
                result["segments"],
                result["copied_packets"],
            )
            self.publish()
            self.assemble_meter.advance()

    def publish(self) -> None:
        """Every segment is in the output: move it into place."""
        replace_output(self.tmp, self.plan.output_path)
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

    def cleanup(self, error: BaseException | None) -> None:
        if error is not None and hasattr(self, "tmp"):
            discard_temp(self.tmp, self.plan.output_path)
