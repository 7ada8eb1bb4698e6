"""The video graph: decode segments -> estimate -> upscale -> encode in order -> finish.

Decode tasks write keyframe-aligned segments into the store (at most a few at once);
a segment's frames get their degradation estimates and then their regions as soon as
it is in. The job's encoder actor is asked for the longest prefix of completed frames,
one call at a time, so frames are encoded in order while later ones are upscaled; when
every frame is encoded, ``finish`` flushes the encoder and remuxes the rest of the
audio/subtitle packets, and the file is renamed into place.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.graphs.job import JobGraph
from pipeline.publish import replace_output, temp_name
from pipeline.publish.files import discard
from pipeline.runner.stage import Call
from pipeline.stages import ENCODE, decode_stage, encoder_pool

log = logging.getLogger(__name__)


class VideoGraph(JobGraph):
    def __init__(self, plan, **kwargs) -> None:
        super().__init__(plan, **kwargs)
        self.ingest_units = len(plan.segments)
        self.decode = decode_stage(plan.config)

    def begin(self) -> None:
        super().begin()
        plan = self.plan
        self.tmp = temp_name(plan.output_path)
        flags = self.store.ingested_mask()
        self.to_decode = [i for i in range(len(plan.segments)) if not flags[i]]
        log.info(
            "ingest: %d of %d segment(s) to decode into %s",
            len(self.to_decode),
            len(plan.segments),
            plan.store_url,
        )
        self.recorder.stage("upscale")
        self.open_bar()
        self.start_conditioning()
        for i, (a, b) in enumerate(plan.segments):
            if flags[i]:
                self.arrived(range(a, b))
        self.decoding = len(self.to_decode)
        for i in self.to_decode:
            a, b = plan.segments[i]
            self.emit(Call(self, self.decode, (plan.info, plan.store_url, a, b), address=i))
        v = plan.config.video
        init = (plan.store_url, plan.info, v, str(self.tmp), list(plan.remux), plan.pix_fmt)
        self.encoder = encoder_pool(plan.config, plan.store_url, init)
        self.prefix = self.encoded = 0
        self.encoding = False  # an encoder call is in flight
        self.finishing = False

    def advance(self) -> None:
        if self.encoding or self.done_output:
            return
        while self.prefix < self.frames and self.left[self.prefix] == 0:
            self.prefix += 1
        if self.prefix > self.encoded:
            self._encoder_call("encode_upto", self.prefix)
        elif self.encoded == self.frames and not self.finishing:
            self.finishing = True
            self._encoder_call("finish")

    def _encoder_call(self, method: str, *args: Any) -> None:
        self.encoding = True
        self.emit(Call(self, ENCODE, args, address=method, method=method, pool=self.encoder))

    def settled_other(self, call: Call, result: Any) -> None:
        if self.error is not None:
            return
        if call.stage is self.decode:
            self.store.mark_ingested(call.address)
            a, b = self.plan.segments[call.address]
            self.arrived(range(a, b))
            return
        self.encoding = False
        if call.method == "encode_upto":
            before, self.encoded = self.encoded, result
            self._forget_dropped(before, self.encoded)
            self.bar.set_postfix_str(f"encoded {self.encoded}/{self.frames}", refresh=False)
            self.recorder.frames_encoded(self.encoded)
            return
        log.info(
            "publish: %d frames encoded, %d packets copied",
            result["frames"],
            result["copied_packets"],
        )
        self.bar.close()
        replace_output(self.tmp, self.plan.output_path)
        self.done_output = True

    def _forget_dropped(self, start: int, stop: int) -> None:
        """With video.drop_encoded the encoder freed frames [start, stop) from the store:
        clear their flags so a resume decodes and upscales them again (the encoded file
        is redone from the first frame on resume anyway)."""
        if not self.plan.config.video.drop_encoded or stop <= start:
            return
        self.store.forget_regions(start, stop)
        for i, (a, b) in enumerate(self.plan.segments):
            if a < stop and b > start:
                self.store.mark_ingested(i, False)

    def failure_other(self, call: Call, exc: BaseException) -> BaseException:
        if call.stage is self.decode:
            return self.unreadable(exc)
        return exc

    def cleanup(self, error: BaseException | None) -> None:
        if error is not None and hasattr(self, "tmp"):
            discard(self.tmp)
