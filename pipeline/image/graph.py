"""The image graph: ingest row bands -> estimate -> upscale regions -> pyramid -> write.

Each step waits for the one before (``pipeline.runner.deps``): the regions for every
band to be in the store (the ``ingested`` flag is set then), the pyramid's first level
for every region, each further level for every block of the level below, the writer for
the last level, and the rename into place for every write call; the output appears
under its name only when complete.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.errors import damaged
from pipeline.image.ingest import plan_bands
from pipeline.image.probe import ImageInfo
from pipeline.image.publish import blocks, create_ome_zarr, pyramid_shapes
from pipeline.image.stages import INGEST, PYRAMID, WRITE_OME, WRITE_SMALL, WRITE_TIFF
from pipeline.image.tasks import Band, Block, ImageJob, WholeFile
from pipeline.regions.graph import JobGraph
from pipeline.runner.cluster import cluster_cpus
from pipeline.runner.stage import Call
from pipeline.store.outputs import replace_output

log = logging.getLogger(__name__)


class ImageGraph(JobGraph):
    def __init__(self, plan, **kwargs) -> None:
        super().__init__(plan, **kwargs)
        info, cfg, lay = plan.info, plan.config.output, plan.layout
        assert isinstance(info, ImageInfo)
        _, out_h, out_w, _ = lay.out_shape
        self.shapes = pyramid_shapes(out_h, out_w, cfg.pyramid_min_px)
        self.levels = [] if plan.fmt in ("png", "jpeg") else list(range(1, len(self.shapes)))
        self.image_job = ImageJob(
            store_url=plan.store_url,
            info=info,
            fmt=plan.fmt,
            staged=str(self.staged),
            shapes=tuple(self.shapes),
            tile_px=cfg.tile_px,
            jpeg_quality=cfg.jpeg_quality,
            meta=info.meta.scaled(lay.scale),  # ICC, resolution, physical sizes
            geo=info.geo_tags,
        )
        self.step_meter: Any = None

    @property
    def context(self) -> ImageJob:
        return self.image_job

    def begin(self) -> None:
        super().begin()
        self.log_resume()
        deps = self.deps
        if not self.store.ingested_mask().all():
            chunk_rows = self.store.array("input").chunks[1]
            bands = plan_bands(self.plan.info, chunk_rows, int(cluster_cpus()) * 2)
            deps.expect("ingest", len(bands))
            self.start_ingest(bands)
        deps.expect("upscale", len(self.todo))
        for level in self.levels:
            deps.expect(("pyramid", level), len(self.level_blocks(level)))
        deps.expect("write", len(self.write_tasks()))
        self.release(deps.after(self.start_regions, ["ingest"]))
        self.release(deps.after(self.start_publish, ["upscale"]))
        for level in self.levels:
            after = "upscale" if level == 1 else ("pyramid", level - 1)
            for task in self.level_blocks(level):
                self.release(deps.after(self.call(PYRAMID, task), [after]))
        last = ("pyramid", self.levels[-1]) if self.levels else "upscale"
        self.release(deps.after(self.start_write, [last]))
        self.release(deps.after(self.rename, ["write"]))

    # ------------------------------------------------------------------ steps
    def start_ingest(self, bands: list[tuple[int, int]]) -> None:
        self.recorder.stage("ingest")
        log.info("ingest: %d band(s) into %s", len(bands), self.plan.store_url)
        self.step_meter = self.events.stage("ingest", len(bands), "band")
        for a, b in bands:
            self.emit(self.call(INGEST, Band(a, b)))

    def start_regions(self) -> None:
        self.store.mark_ingested(0)
        if not self.todo:
            return
        self.recorder.stage("upscale")
        self.start_upscale()
        self.arrived(range(self.frames))

    def start_publish(self) -> None:
        plan = self.plan
        self.recorder.stage("publish")
        if plan.fmt not in ("png", "jpeg"):
            self.store.create_pyramid(self.shapes, plan.config.output.tile_px)
            log.info("publish: %s with %d pyramid level(s)", plan.fmt, len(self.shapes))
        steps = sum(len(self.level_blocks(level)) for level in self.levels)
        self.step_meter = self.events.stage("publish", steps + self.write_steps(), "step")

    def level_blocks(self, level: int) -> list[Block]:
        h, w = self.shapes[level]
        return [Block(level, *b) for b in blocks(h, w, self.plan.config.output.tile_px * 4)]

    def write_tasks(self) -> list[Any]:
        """The writer's calls: the whole file at once (TIFF, PNG, JPEG), or one per
        shard-aligned block of every level (OME-Zarr)."""
        if self.plan.fmt in ("png", "jpeg", "tiff"):
            return [WholeFile()]
        shard = self.plan.layout.region_out_px
        return [
            Block(level, *b)
            for level, (h, w) in enumerate(self.shapes)
            for b in blocks(h, w, shard)
        ]

    def write_steps(self) -> int:
        """The writer's share of the publish stage's length (the TIFF and PNG/JPEG writers
        are one call each, so they count as one step)."""
        return len(self.write_tasks())

    def start_write(self) -> None:
        plan, lay, cfg = self.plan, self.plan.layout, self.plan.config.output
        if plan.fmt in ("png", "jpeg"):
            log.info("publish: %s", plan.fmt)
            stage = WRITE_SMALL
        elif plan.fmt == "tiff":
            stage = WRITE_TIFF
        else:
            shard = lay.region_out_px
            job = self.image_job
            create_ome_zarr(
                self.staged,
                plan.output_path.name,
                self.shapes,
                lay.channels,
                lay.dtype,
                shard,
                min(cfg.tile_px, shard),
                meta=job.meta,
                geo=job.geo,
                scale=lay.scale,
            )
            stage = WRITE_OME
        for task in self.write_tasks():
            self.emit(self.call(stage, task))

    def rename(self) -> None:
        replace_output(self.staged, self.plan.output_path)
        self.done_output = True

    # ----------------------------------------------------------------- settle
    def region_settled(self, task: Any) -> None:
        self.release(self.deps.done("upscale"))

    def settled_other(self, call: Call, result: Any) -> None:
        if self.step_meter is not None:
            self.step_meter.advance()
        if call.stage is INGEST:
            self.release(self.deps.done("ingest"))
        elif call.stage is PYRAMID:
            self.release(self.deps.done(("pyramid", call.task.level)))
        else:
            self.release(self.deps.done("write"))

    def failure_other(self, call: Call, exc: BaseException) -> BaseException:
        if call.stage is INGEST and damaged(exc):
            return self.unreadable(exc)
        # Not the file's bytes: a bug of ours, shown as one (its own type, exit 1).
        return getattr(exc, "cause", None) or exc
