"""Encode segments: each segment of a video is encoded on its own, from the store.

A segment's frames are encoded by a fresh encoder, so the segment starts with a
keyframe that needs nothing before it (an IDR: every encoder's first frame) and no
frame refers across segments. The encoder is set up exactly as the final stream will
be (``video_stream``, on a container of the output's format that is never written, so
format-dependent flags such as global headers match): every segment then has the same
codec parameters, and ``pipeline.video.assemble`` joins the packets without re-encoding.

A segment file holds the packets exactly as the encoder made them, with their
timestamps in the source's time base (no container in between: containers round or
shift timestamps): an 8-byte header length, a JSON header (time base, codec
extradata, per packet: pts, dts, keyframe, size) and the packets' bytes. It is
written under a temporary name and renamed (one PUT on an object store), so a
segment file that exists is complete.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from pipeline.config import VideoConfig
from pipeline.store.urls import filesystem, is_remote, local_path
from pipeline.video.decode import sws_colorspace
from pipeline.video.hdr import hdr10_options
from pipeline.video.probe import VideoInfo
from pipeline.video.tasks import Encoded, Segment, VideoJob
from pipeline.video.timecode import shifted

SEGMENT_FORMAT = 1


@dataclass
class SegmentPackets:
    time_base: tuple[int, int]
    extradata: bytes
    pts: list[int]
    dts: list[int]
    keyframe: list[bool]
    sizes: list[int]
    payload: bytes

    def packets(self) -> list[tuple[bytes, int, int, bool]]:
        """(data, pts, dts, keyframe) in decode order."""
        out, at = [], 0
        for p, d, k, n in zip(self.pts, self.dts, self.keyframe, self.sizes, strict=True):
            out.append((self.payload[at : at + n], p, d, k))
            at += n
        return out


def write_segment(path: str, seg: SegmentPackets) -> None:
    header = json.dumps(
        {
            "format": SEGMENT_FORMAT,
            "time_base": list(seg.time_base),
            "extradata": base64.b64encode(seg.extradata).decode(),
            "pts": seg.pts,
            "dts": seg.dts,
            "keyframe": seg.keyframe,
            "sizes": seg.sizes,
        }
    ).encode()
    blob = struct.pack("<Q", len(header)) + header + seg.payload
    if not is_remote(path):
        final = local_path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    else:
        fs, key = filesystem(path)
        fs.pipe_file(key, blob)  # one PUT: the object appears whole or not at all


def read_segment(path: str) -> SegmentPackets:
    if not is_remote(path):
        blob = local_path(path).read_bytes()
    else:
        fs, key = filesystem(path)
        blob = fs.cat_file(key)
    (n,) = struct.unpack("<Q", blob[:8])
    h = json.loads(blob[8 : 8 + n])
    if h.get("format") != SEGMENT_FORMAT:
        raise RuntimeError(f"{path} is not a segment file of format {SEGMENT_FORMAT}")
    return SegmentPackets(
        tuple(h["time_base"]),
        base64.b64decode(h["extradata"]),
        h["pts"],
        h["dts"],
        h["keyframe"],
        h["sizes"],
        blob[8 + n :],
    )


def encoder_options(cfg: VideoConfig, info: VideoInfo | None = None) -> dict[str, str]:
    options = dict(cfg.options_dict())
    if cfg.crf is not None and cfg.codec in ("libx264", "libx265", "libsvtav1"):
        options.setdefault("crf", str(cfg.crf))
    if cfg.preset and cfg.codec in ("libx264", "libx265"):
        options.setdefault("preset", str(cfg.preset))
    if cfg.preset and cfg.codec == "libsvtav1" and str(cfg.preset).isdigit():
        options.setdefault("preset", str(cfg.preset))  # SVT-AV1's presets are 0..13
    if cfg.codec == "libx265":
        options.setdefault("x265-params", "log-level=error")
    if info is not None:  # the source's HDR10 static metadata, in the encoder's fields
        hdr10_options(cfg.codec, options, info.mastering, info.cll)
    return options


def video_stream(
    container: Any,
    info: VideoInfo,
    cfg: VideoConfig,
    size: tuple[int, int],
    pix_fmt: str,
    threads: int = 0,
) -> Any:
    """The output video stream, set up the same way for every segment's encoder and for
    the final container (``size`` is (width, height)): declared rate, the source video
    stream's tags and disposition, its start timecode (moved for a range), colour tags,
    sample aspect ratio (the codec's VUI and the container's), encoder options."""
    from pipeline.video.container import output_rate, source_stream
    from pipeline.video.streams import copy_stream_meta

    vs = container.add_stream(cfg.codec, rate=output_rate(info))
    copy_stream_meta(source_stream(info, info.video_index), vs, container.format.name)
    set_timecode(vs.metadata, output_timecode(info))
    vs.time_base = info.tb
    vs.width, vs.height = size
    vs.pix_fmt = pix_fmt
    cc = vs.codec_context
    cc.time_base = info.tb
    cc.color_range = info.color["range"]
    cc.color_primaries = info.color["primaries"]
    cc.color_trc = info.color["trc"]
    cc.colorspace = info.color["space"]
    if info.sar:
        cc.sample_aspect_ratio = Fraction(*info.sar)
    if threads:
        cc.thread_count = threads
    vs.options = encoder_options(cfg, info)
    return vs


def output_timecode(info: VideoInfo) -> str | None:
    """The output's start timecode: the source's, moved on by the range's first frame."""
    if not info.timecode:
        return None
    rate = Fraction(*(info.avg_rate or info.base_rate or (25, 1))) / info.fields
    return shifted(info.timecode, info.first // info.fields, rate)


def set_timecode(tags: Any, timecode: str | None) -> None:
    """Replace any ``timecode`` tag of ``tags`` (whatever its case) by ``timecode``."""
    for key in [k for k in tags if k.lower() == "timecode"]:
        del tags[key]
    if timecode:
        tags["timecode"] = timecode


def pts_offset(info: VideoInfo) -> int:
    """Output pts start at 0 for a range that does not start at the first frame."""
    return info.pts[0] if info.first > 0 else 0


def encode_segment(task: Segment, job: VideoJob) -> Encoded:
    """Encode the segment's frames [start, end) of ``output`` into its segment file."""
    import av

    from pipeline.runner.placement import current_node
    from pipeline.store.jobstore import JobStore

    info, cfg, pix_fmt, threads = job.info, job.video, job.pix_fmt, job.threads
    container = job.container
    unit, start, end = task.index, task.start, task.end
    store = JobStore.open(job.store_url)
    lay = store.layout
    frames = store.array("output")
    off = pts_offset(info)
    fmt = "rgb48le" if lay.dtype == "uint16" else "rgb24"
    size = (lay.width * lay.scale, lay.height * lay.scale)
    packets: list[Any] = []
    # Never written: a container of the output's format sets the encoder's flags.
    shell = av.open(os.devnull, mode="w", format=container)
    try:
        vs = video_stream(shell, info, cfg, size, pix_fmt, threads)
        cc = vs.codec_context
        for i in range(start, end):
            frame = av.VideoFrame.from_ndarray(np.asarray(frames[i]), format=fmt)
            frame = frame.reformat(
                format=pix_fmt,
                dst_colorspace=sws_colorspace(info.color["space"]),
                dst_color_range=info.color["range"] or None,
            )
            frame.pts = info.pts[i] - off
            frame.time_base = info.tb
            packets.extend(cc.encode(frame))
        packets.extend(cc.encode(None))
        extradata = bytes(cc.extradata or b"")
    finally:
        shell.close()
    packets = [p for p in packets if p.size]
    seg = SegmentPackets(
        info.time_base,
        extradata,
        [int(p.pts) for p in packets],
        [int(p.dts) if p.dts is not None else int(p.pts) for p in packets],
        [bool(p.is_keyframe) for p in packets],
        [int(p.size) for p in packets],
        b"".join(bytes(p) for p in packets),
    )
    if len(seg.pts) != end - start:
        raise RuntimeError(
            f"segment {unit} (frames {start}..{end - 1}): the encoder gave {len(seg.pts)} "
            f"packets for {end - start} frames"
        )
    write_segment(store.segment_path(unit), seg)
    return Encoded(unit, end - start, current_node(), bytes=len(seg.payload))
