"""The image graph: ingest row bands -> estimate -> upscale regions -> pyramid -> write.

Each step starts when the one before has settled: the bands are copied into the store
(the ``ingested`` flag is set once all are in), every region is upscaled, the pyramid
is built level by level (each block of a level from the level below), and the format
writer runs; the output is renamed into place only when complete.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.errors import damaged
from pipeline.image.ingest import plan_bands
from pipeline.image.probe import ImageInfo
from pipeline.image.publish import blocks, create_ome_zarr, pyramid_shapes
from pipeline.image.stages import INGEST, PYRAMID, WRITE_OME, WRITE_SMALL, WRITE_TIFF
from pipeline.job.graph import JobGraph
from pipeline.runner.cluster import cluster_cpus
from pipeline.runner.stage import Call
from pipeline.store.outputs import discard_temp, replace_output, temp_name

log = logging.getLogger(__name__)


class ImageGraph(JobGraph):
    def begin(self) -> None:
        super().begin()
        self.log_resume()
        self.phase = "ingest" if not self.store.ingested_mask().all() else "regions"
        self.started = False
        self.outstanding = 0  # calls of the current ingest/publish step in flight
        self.tmp = temp_name(self.plan.output_path)

    def _calls(self, stage, args_list) -> None:
        for args in args_list:
            self.outstanding += 1
            self.emit(Call(self, stage, tuple(args)))

    def advance(self) -> None:
        plan, store = self.plan, self.store
        if self.phase == "ingest":
            if not self.started:
                self.started = True
                self.recorder.stage("ingest")
                chunk_rows = store.array("input").chunks[1]
                bands = plan_bands(plan.info, chunk_rows, int(cluster_cpus()) * 2)
                log.info("ingest: %d band(s) into %s", len(bands), plan.store_url)
                self.step_meter = self.events.stage("ingest", len(bands), "band")
                self._calls(INGEST, [(plan.info, plan.store_url, a, b) for a, b in bands])
            if self.outstanding:
                return
            store.mark_ingested(0)
            self.phase, self.started = "regions", False
        if self.phase == "regions":
            if not self.todo:
                self.phase = "publish"
            else:
                if not self.started:
                    self.started = True
                    self.recorder.stage("upscale")
                    self.start_upscale()
                    self.arrived(range(self.frames))
                if self.regions_left or self.estimates_left:
                    return
                self.phase, self.started = "publish", False
        if self.phase == "publish":
            self._publish()

    # ----------------------------------------------------------------- publish
    def _publish(self) -> None:
        """Pyramid levels 1.. (each from the one below), then the writer, then the
        rename: each step once the one before has settled."""
        plan, cfg = self.plan, self.plan.config.output
        if not self.started:
            self.started = True
            self.recorder.stage("publish")
            _, out_h, out_w, _ = plan.layout.out_shape
            self.shapes = pyramid_shapes(out_h, out_w, cfg.pyramid_min_px)
            levels = []
            if plan.fmt not in ("png", "jpeg"):
                self.store.create_pyramid(self.shapes, cfg.tile_px)
                log.info("publish: %s with %d pyramid level(s)", plan.fmt, len(self.shapes))
                levels = list(range(1, len(self.shapes)))
            self.steps = [*levels, "write", "rename"]
            self.step_meter = self.events.stage("publish", self._publish_calls(levels), "step")
        if self.outstanding:
            return
        step = self.steps.pop(0)
        if step == "write":
            self._write()
        elif step == "rename":
            replace_output(self.tmp, plan.output_path)
            self.done_output = True
        else:
            h, w = self.shapes[step]
            calls = [(plan.store_url, step, *b) for b in blocks(h, w, cfg.tile_px * 4)]
            self._calls(PYRAMID, calls)

    def _publish_calls(self, levels: list[int]) -> int:
        """The publish stage's length: one step per pyramid block and per writer call (the
        TIFF and PNG/JPEG writers are one call each, so they count as one step)."""
        plan, cfg = self.plan, self.plan.config.output
        n = sum(len(blocks(*self.shapes[level], cfg.tile_px * 4)) for level in levels)
        if plan.fmt in ("png", "jpeg", "tiff"):
            return n + 1
        shard = plan.layout.region_out_px
        return n + sum(len(blocks(h, w, shard)) for h, w in self.shapes)

    def _write(self) -> None:
        plan, cfg, lay = self.plan, self.plan.config.output, self.plan.layout
        tmp = str(self.tmp)
        info = plan.info
        assert isinstance(info, ImageInfo)
        meta = info.meta.scaled(lay.scale)  # ICC, resolution, physical sizes of the output
        if plan.fmt in ("png", "jpeg"):
            log.info("publish: %s", plan.fmt)
            calls = [(plan.store_url, tmp, plan.fmt, cfg.jpeg_quality, meta)]
            self._calls(WRITE_SMALL, calls)
        elif plan.fmt == "tiff":
            geo = info.geo_tags
            calls = [(plan.store_url, tmp, self.shapes, cfg.tile_px, geo, meta)]
            self._calls(WRITE_TIFF, calls)
        else:
            shard = lay.region_out_px
            create_ome_zarr(
                self.tmp,
                plan.output_path.name,
                self.shapes,
                lay.channels,
                lay.dtype,
                shard,
                min(cfg.tile_px, shard),
                meta=meta,
                geo=info.geo_tags,
                scale=lay.scale,
            )
            calls = [
                (plan.store_url, tmp, level, *b)
                for level, (h, w) in enumerate(self.shapes)
                for b in blocks(h, w, shard)
            ]
            self._calls(WRITE_OME, calls)

    def settled_other(self, call: Call, result: Any) -> None:
        self.outstanding -= 1
        if self.phase in ("ingest", "publish"):
            self.step_meter.advance()

    def failure_other(self, call: Call, exc: BaseException) -> BaseException:
        if call.stage is INGEST and damaged(exc):
            return self.unreadable(exc)
        # Not the file's bytes: a bug of ours, shown as one (its own type, exit 1).
        return getattr(exc, "cause", None) or exc

    def cleanup(self, error: BaseException | None) -> None:
        if error is not None and hasattr(self, "tmp"):
            discard_temp(self.tmp, self.plan.output_path)
