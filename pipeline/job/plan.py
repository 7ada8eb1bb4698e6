"""Plan a job before anything runs: check paths, probe the input, fix the store layout.

Bad input and bad config fail here, on the driver, with one-line messages, before Ray
starts or any file is written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, frame_codec, resolve_model_defaults
from pipeline.errors import UserError
from pipeline.formats import (
    IMAGE_OUTPUT_HINT,
    IMAGE_OUTPUTS,
    SEQUENCE_OUTPUT_HINT,
    VIDEO_CONTAINERS,
    VIDEO_OUTPUT_HINT,
)
from pipeline.image.nodata import GDAL_NODATA, parse_nodata
from pipeline.image.probe import IMAGE_KINDS, ImageInfo, identity, probe, sniff
from pipeline.image.publish import check_output
from pipeline.image.scaled_meta import geo_epsg, geo_keys_complete
from pipeline.models import ModelSpec, get_spec
from pipeline.pure.tiling import shard_geometry
from pipeline.pure.value_range import has_natural_range
from pipeline.regions.planned import Plan
from pipeline.store.jobstore import JobStore, Layout, default_store_url
from pipeline.store.urls import ObjectPath, as_path, check_output_location
from pipeline.video.container import (
    check_dispositions,
    choose_pix_fmt,
    container_format,
    remux_streams,
)
from pipeline.video.deinterlace import plan_deinterlace
from pipeline.video.hdr import check_hdr
from pipeline.video.picture import check_aspect
from pipeline.video.probe import VideoInfo, plan_segments, probe_video, segment_target_frames
from pipeline.video.sequence_in import is_sequence_input, probe_sequence, sequence_identity
from pipeline.video.sequence_out import SequenceTarget, is_sequence_output, plan_sequence_output

log = logging.getLogger(__name__)


def _check_paths(input_path: Path | ObjectPath, output: Path | ObjectPath, overwrite: bool) -> None:
    if str(input_path) == str(output):
        raise UserError("the output path is the input path; choose another output name")
    if isinstance(output, ObjectPath):  # no directories to check on an object store
        check_output_location(str(output), overwrite)
        return
    if not output.parent.exists():
        raise UserError(f"output directory {output.parent} does not exist; create it first")
    if not os.access(output.parent, os.W_OK):
        raise UserError(f"output directory {output.parent} is not writable")
    if (
        isinstance(input_path, Path)
        and input_path.exists()
        and output.resolve() == input_path.resolve()
    ):
        raise UserError("the output path is the input path; choose another output name")
    if output.exists() and not overwrite:
        raise UserError(f"{output} already exists; pass --overwrite to replace it")


def _output_kind(out: Path | ObjectPath) -> str:
    if is_sequence_output(str(out)):
        return "sequence"
    suffix = out.suffix.lower()
    if suffix in VIDEO_CONTAINERS:
        return "video"
    if suffix in IMAGE_OUTPUTS:
        return IMAGE_OUTPUTS[suffix]
    raise UserError(
        f"cannot tell the output format from {out.name!r}; use an image extension "
        f"({', '.join(sorted(IMAGE_OUTPUTS))}) or a video one "
        f"({', '.join(sorted(VIDEO_CONTAINERS))})"
    )


def check_pixel_semantics(info: ImageInfo, cfg: JobConfig, model: ModelSpec) -> None:
    """Refuse what the model would get wrong (class codes, samples without a display
    range); say in one line what is converted (palette -> colours, orientation) and
    what a multi-resolution or multi-image TIFF holds besides the level that is read."""
    if info.skipped:
        log.info(
            "probe: %s: reading level 0 of series %d (%dx%d); not read: %s (labels, macros "
            "and thumbnails are never copied to the output)",
            info.path,
            info.series,
            info.width,
            info.height,
            info.skipped,
        )
    if info.palette:
        if cfg.output.palette == "refuse":
            raise UserError(
                f"{info.path} is a palette (colour-table) image: its values are class codes, "
                f"and model {model.name!r} interpolates, which would invent codes; "
                "output.palette=refuse refuses it (--set output.palette=expand upscales its "
                "colours instead)"
            )
        log.info(
            "probe: %s has a colour table: expanded to %s colours before upscaling "
            "(output.palette=expand; the output has no colour table)",
            info.path,
            "RGBA" if info.alpha else "RGB",
        )
    if info.orientation != 1:
        log.info(
            "probe: %s has orientation %d: stored upright (%dx%d), the output needs no tag",
            info.path,
            info.orientation,
            info.width,
            info.height,
        )
    if not has_natural_range(info.dtype) and not model.any_range and not cfg.model.value_range:
        raise UserError(
            f"{info.path} has {info.dtype} samples, which have no display range; model "
            f"{model.name!r} needs one: pass --set model.value_range=MIN,MAX (the values "
            "shown as black and white; the output is clipped to it), or use --model bicubic"
        )
    bands = info.channels - info.alpha
    if bands > 1 and not (info.rgb and bands == 3):
        log.info(
            "probe: %s has %d channel(s)%s: each is upscaled on its own, as gray",
            info.path,
            bands,
            " and alpha" if info.alpha else "",
        )


def check_geo(src: Path | ObjectPath, info: ImageInfo, fmt: str) -> None:
    """Georeferencing goes to .tif and .zarr; PNG/JPEG have no place for it (one warning
    line). Every GeoTIFF's keys are written as they are; only a CRS known by nothing but
    its EPSG code (a GeoZarr input without GDAL's WKT) cannot be written as GeoKeys, which
    need to say whether it is projected or geographic: refused for .tif."""
    if not info.geo_tags:
        return
    if fmt in ("png", "jpeg"):
        log.warning(
            "%s is georeferenced; %s has no place for it: write .tif or .zarr to keep it",
            src,
            fmt.upper(),
        )
    elif fmt == "tiff" and not geo_keys_complete(info.geo_tags):
        code = geo_epsg(info.geo_tags)
        raise UserError(
            f"{src} names its CRS only by its EPSG code (EPSG:{code}, in proj:code or "
            "_CRS.url, with no WKT or GeoKeys), and GeoTIFF keys need to know whether it "
            "is projected or geographic; write .zarr (which keeps the code), or add GDAL's "
            "_CRS attribute with the WKT to the input"
        )


def check_sequence_model(info: VideoInfo, cfg: JobConfig, model: ModelSpec) -> None:
    """Float (EXR) frames have no display range: a model that needs one needs
    ``model.value_range``; bicubic runs them in float, values above 1 kept."""
    if info.dtype == "float32" and not model.any_range and not cfg.model.value_range:
        raise UserError(
            f"{info.path} holds float (OpenEXR) samples, which have no display range; model "
            f"{model.name!r} needs one: pass --set model.value_range=MIN,MAX (scene-linear "
            "values outside it are clipped), or use --model bicubic"
        )


def check_float_to_video(info: VideoInfo) -> None:
    if info.dtype == "float32":
        raise UserError(
            f"{info.path} holds float (OpenEXR) samples, which no video codec here keeps; "
            "write an EXR sequence (out/frame.%06d.exr)"
        )


def plan_job(input_path: str, output_path: str, cfg: JobConfig, overwrite: bool) -> Plan:
    src, out = as_path(input_path), as_path(output_path)
    fmt = _output_kind(out)
    _check_paths(src, out, overwrite)
    model = get_spec(cfg.model.name)
    cfg = resolve_model_defaults(cfg, model)
    sequence_in = is_sequence_input(input_path)
    if not sequence_in and not src.exists():
        raise UserError(f"input {src} does not exist")
    is_image = not sequence_in and sniff(src) in IMAGE_KINDS
    scale = cfg.model.scale
    v = cfg.video
    segments: tuple[tuple[int, int], ...] = ()
    remux: tuple[int, ...] = ()
    pix_fmt = ""
    sequence: SequenceTarget | None = None
    if is_image:
        if fmt in ("video", "sequence"):
            raise UserError(f"{src} is an image; give an image output ({IMAGE_OUTPUT_HINT})")
        info: ImageInfo | VideoInfo = probe(src, cfg.output.max_input_decode_mb)
        check_pixel_semantics(info, cfg, model)
        check_output(
            out,
            fmt,
            (info.height * scale, info.width * scale),
            info.channels,
            info.dtype,
            cfg.output,
            alpha=info.alpha,
            rgb=info.rgb,
            premultiplied=info.premultiplied,
        )
        check_geo(src, info, fmt)
        shard, chunk = shard_geometry(scale, cfg.store.region_out_px, cfg.store.chunk_out_px)
        frames = 1
        selection: dict[str, Any] = {}
    else:
        if sequence_in:
            info = probe_sequence(input_path, v.fps, v.frames, v.start_s, v.end_s)
            check_sequence_model(info, cfg, model)
        else:
            info = plan_deinterlace(probe_video(src, v.frames, v.start_s, v.end_s), v.deinterlace)
        if fmt not in ("video", "sequence"):
            raise UserError(
                f"{src} is a video; give a video output ({VIDEO_OUTPUT_HINT}) or a frame "
                f"sequence ({SEQUENCE_OUTPUT_HINT})"
            )
        if fmt == "sequence":
            url = default_store_url(str(src), str(out), cfg.store.work_dir)
            sequence = plan_sequence_output(
                info,
                str(out),
                v.start_number,
                overwrite,
                JobStore.exists(url),
                v.drop_unsupported,
            )
        else:
            check_hdr(info, v.codec, v.drop_unsupported)
            check_aspect(info, v.codec, container_format(str(out)), v.drop_unsupported)
            check_float_to_video(info)
            pix_fmt = choose_pix_fmt(v.codec, info.pix_fmt, v.pix_fmt)
            if not sequence_in:  # a sequence has pictures only
                remux = tuple(remux_streams(info, str(out), v.drop_unsupported))
            check_dispositions(info, str(out), remux, v.drop_unsupported)
        target = segment_target_frames(info, v.segment_s, v.segment_frames)
        segments = tuple(plan_segments(info, target, v.segment_max_frames or 4 * target))
        side = max(info.height, info.width) * scale
        target = side if side <= v.max_region_out_px else cfg.store.region_out_px
        shard, chunk = shard_geometry(scale, target, cfg.store.chunk_out_px)
        frames = info.frames
        selection = {"first": info.first, "frames": info.frames}
        if info.deinterlace:  # other pixels in the store: a store made without is not resumed
            selection["deinterlace"] = info.deinterlace
    nodata_tag = info.geo_tags.get(GDAL_NODATA) if is_image else None
    layout = Layout(
        frames=frames,
        height=info.height,
        width=info.width,
        channels=info.channels,
        dtype=info.dtype,
        scale=scale,
        region_out_px=shard,
        chunk_out_px=chunk,
        codec=frame_codec(cfg.store.codec, is_image),
        **(
            {
                "alpha": info.alpha,
                "rgb": info.rgb,
                "premultiplied": info.premultiplied,
                "nodata": None if info.palette else parse_nodata(nodata_tag, info.dtype),
            }
            if is_image
            else {}
        ),
    )
    # What must match for a store to be resumed: the input and everything that changes
    # the stored pixels. Actor counts, batch sizes and encoder settings may change.
    spec = {
        "input": sequence_identity(info) if sequence_in else identity(src),
        "model": {"name": cfg.model.name, "scale": scale, "weights": cfg.model.weights},
        "tiling": {
            "tile_px": cfg.tiling.tile_px,
            "overlap_px": cfg.tiling.overlap_px,
            "window": cfg.tiling.window,
        },
        # The codec changes how frames are stored, not what they hold: a store keeps its own.
        "layout": {k: v for k, v in layout.__dict__.items() if k != "codec"},
        "selection": selection,
        "segments": [list(s) for s in segments],
        "config": {"model": cfg.to_dict()["model"] | {"batch_size": None, "device": None}},
    }
    if sequence is not None:  # the files a resume finds must be the same files
        spec["sequence_out"] = {"pattern": sequence.pattern, "numbers": [sequence.numbers[0]]}
    url = default_store_url(str(src), str(out), cfg.store.work_dir)
    return Plan(
        str(src), out, cfg, model, info, layout, fmt, spec, url, segments, remux, pix_fmt, sequence
    )
