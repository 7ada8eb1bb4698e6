"""The video graph with a frame sequence as its output (``-o out/frame.%06d.exr``).

Everything upstream is the video graph's (segments, decode window, conditioning,
regions, resume); a segment's "encode" writes its frame files instead
(``pipeline.video.sequence_out``), and the last step checks that every file is there instead
of joining segments: the files are already in place, each renamed in when complete.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.video.graph import VideoGraph
from pipeline.video.sequence_out import sweep_temporaries
from pipeline.video.stages import sequence_check_stage, sequence_write_stage

log = logging.getLogger(__name__)


class SequenceGraph(VideoGraph):
    def __init__(self, plan, **kwargs) -> None:
        super().__init__(plan, **kwargs)
        self.encode = sequence_write_stage(plan.config)
        self.assemble = sequence_check_stage(plan.config)

    def begin(self) -> None:
        super().begin()
        # Files under their final names are complete; on a resume they are kept. A fresh
        # store (nothing done yet) means a new job: --overwrite replaces every file.
        self.skip_existing = bool(self.store.done_mask().any())
        sweep_temporaries(self.plan.sequence)

    def encode_args(self, i: int, a: int, b: int) -> tuple[Any, ...]:
        plan = self.plan
        return (plan.store_url, plan.sequence, i, a, b, self.skip_existing)

    def assemble_args(self) -> tuple[Any, ...]:
        return (self.plan.sequence, len(self.plan.segments))

    def publish(self) -> None:
        log.info("publish: %d frame file(s) as %s", self.plan.layout.frames, self.plan.output_path)
        self.done_output = True
