"""The video graph with a frame sequence as its output (``-o out/frame.%06d.exr``).

Everything upstream is the video graph's (segments, decode window, conditioning,
regions, resume); a segment's "encode" writes its frame files instead
(``pipeline.video.sequence_out``), and the last step checks that every file is there
instead of joining segments: the files are already in place, each renamed in when
complete.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.video.graph import VideoGraph
from pipeline.video.sequence_out import sweep_temporaries
from pipeline.video.stages import CheckFramesStage, WriteFramesStage
from pipeline.video.tasks import Segment

log = logging.getLogger(__name__)


class SequenceGraph(VideoGraph):
    def __init__(self, plan, **kwargs) -> None:
        super().__init__(plan, **kwargs)
        self.skip_existing = False

    def output_stages(self) -> tuple[Any, Any]:
        return WriteFramesStage.of(self.plan.config), CheckFramesStage.of(self.plan.config)

    def begin(self) -> None:
        # Files under their final names are complete; on a resume they are kept. A fresh
        # store (nothing done yet) means a new job: --overwrite replaces every file.
        super().begin()
        sweep_temporaries(self.plan.sequence)

    def open_store(self) -> None:
        super().open_store()
        self.skip_existing = bool(self.store.done_mask().any())

    def segment_task(self, i: int) -> Segment:
        a, b = self.plan.segments[i]
        return Segment(i, a, b, skip_existing=self.skip_existing)

    def publish(self) -> None:
        log.info("publish: %d frame file(s) as %s", self.plan.layout.frames, self.plan.output_path)
        self.done_output = True
