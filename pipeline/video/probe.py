"""Video probe: exact frame lists from a demux-only scan, and the segments they cut into.

The probe never trusts ``nb_frames`` or duration x fps: it reads every packet header of
the video stream (no decoding) to get the exact presentation timestamps, keyframes and
frame count. Ingest decodes keyframe-aligned segments in parallel Ray tasks straight
into the job store, each frame exactly once, addressed by its index in the sorted pts
list.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import parse_frames
from pipeline.errors import UserError
from pipeline.store.urls import ObjectPath, as_path, av_input
from pipeline.video.picture import read_first_frames
from pipeline.video.streams import probe_chapters
from pipeline.video.timecode import find_timecode


@dataclass(frozen=True)
class VideoInfo:
    """What probe learned about a video; everything the later stages need."""

    path: str
    kind: str  # "video"
    container: str
    width: int
    height: int
    frames: int  # in the selected range
    first: int  # index of the first selected frame in the source
    pts: tuple[int, ...]  # presentation timestamps of the selected frames, sorted
    keyframes: tuple[int, ...]  # source indices of keyframes
    time_base: tuple[int, int]
    avg_rate: tuple[int, int] | None
    video_index: int
    codec: str
    pix_fmt: str
    bit_depth: int
    color: dict[str, int]
    rotation: int
    streams: tuple[dict[str, Any], ...]
    metadata: dict[str, str] = field(default_factory=dict)
    end_pts: int | None = None  # pts where the selection stops (None: end of stream)
    base_rate: tuple[int, int] | None = None  # r_frame_rate: the timing grid
    last_duration: int | None = None  # the source's last frame's duration (time base)
    chapters: tuple[dict[str, Any], ...] = ()  # streammeta.probe_chapters form
    before_pts: int | None = None  # source pts of the frame before the selection, if any
    # Picture (pipeline/video/picture.py): sample aspect ratio (None: square), interlacing,
    # HDR10 static metadata, dynamic HDR metadata found (refused unless dropped).
    sar: tuple[int, int] | None = None
    field_order: int = 0  # AVFieldOrder of the stream (pipeline/video/deinterlace.FIELD_ORDERS)
    interlaced: bool = False  # the first decoded frames are flagged interlaced
    mastering: tuple[tuple[int, int], ...] | None = None  # SMPTE ST 2086, AVRationals
    cll: tuple[int, int] | None = None  # (MaxCLL, MaxFALL)
    dynamic_hdr: tuple[str, ...] = ()
    timecode: str | None = None  # the source's start timecode (pipeline/video/timecode.py)
    # What plan decided (pipeline/video/deinterlace.py): "" (as is), "frame" or "field"; in
    # field mode every entry of the frame list is one field (time base halved).
    deinterlace: str = ""
    deint_all: bool = False  # bwdif on every frame, not only those flagged interlaced
    fields: int = 1  # frame-list entries per source frame (2 in field mode)

    channels: int = 3

    @property
    def dtype(self) -> str:
        return "uint16" if self.bit_depth > 8 else "uint8"

    @property
    def tb(self) -> Fraction:
        return Fraction(*self.time_base)


def _bit_depth(fmt: Any) -> int:
    try:
        return max(c.bits for c in fmt.components)
    except (AttributeError, ValueError):
        return 8


def _stream_info(stream: Any) -> dict[str, Any]:
    cc = stream.codec_context
    return {
        "index": stream.index,
        "type": stream.type,
        "codec": cc.name if cc is not None else None,
        "time_base": [stream.time_base.numerator, stream.time_base.denominator]
        if stream.time_base
        else None,
        "language": stream.metadata.get("language"),
        "title": stream.metadata.get("title"),
        "metadata": dict(stream.metadata),
        "disposition": int(stream.disposition),
    }


def _last_duration(stream: Any, last_pts: int, durations: dict[int, int]) -> int | None:
    """How long the last frame (in pts order) is shown, in the stream's time base.

    MP4/MOV record the track's end (start + duration; their packet durations are decode-
    order gaps), Matroska the frame's own block duration; failing both, the last gap.
    """
    if stream.duration and stream.start_time is not None:
        end = stream.start_time + stream.duration
        if end > last_pts:
            return end - last_pts
    if durations.get(last_pts):
        return durations[last_pts]
    return None


def parse_range(
    frames: str | None, start_s: float | None, end_s: float | None, pts: list[int], tb: Fraction
) -> tuple[int, int]:
    """Source frame indices [a, b) selected by --frames A:B or --start/--end seconds."""
    total = len(pts)
    if frames is not None:
        first_frame, end_frame = parse_frames(frames)
        a = 0 if first_frame is None else first_frame
        b = total if end_frame is None else end_frame
    else:
        first = pts[0]
        a = 0 if start_s is None else bisect.bisect_left(pts, first + int(np.ceil(start_s / tb)))
        b = total if end_s is None else bisect.bisect_left(pts, first + int(np.ceil(end_s / tb)))
    a, b = max(0, a), min(total, b)
    if a >= b:
        raise UserError(f"the selected range holds no frames (the video has {total} frames)")
    return a, b


def probe_video(
    path: str | Path | ObjectPath,
    frames: str | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
) -> VideoInfo:
    import av

    p = as_path(path)
    try:
        container = av.open(av_input(str(p)), mode="r")
    except (av.error.FFmpegError, OSError) as exc:
        raise UserError(
            f"{p} is not a supported input: not an image (PNG, JPEG, TIFF, Zarr; detected "
            f"from the content) and not a readable video ({exc})"
        ) from None
    with container:
        videos = [
            s
            for s in container.streams
            if s.type == "video" and not s.disposition & av.stream.Disposition.attached_pic
        ]
        if not videos:
            raise UserError(f"{p} has no video stream (cover art is not one); nothing to upscale")
        vs = videos[0]
        cc = vs.codec_context
        # Decoded frames fill in what the headers may lack (a video stream that starts
        # after the demuxer's look-ahead has no size or pixel format there); then the
        # packet scan starts again from the beginning.
        headers_complete = cc.width > 0 and cc.height > 0 and cc.format is not None
        first_frames = None if headers_complete else read_first_frames(container, vs)
        if first_frames is not None:
            if first_frames.width <= 0 or first_frames.pix_fmt is None:
                raise UserError(
                    f"{p} is not a supported input: not an image, and its "
                    f"{container.format.name} video stream has no decodable frames"
                )
            container.seek(0)
        all_pts: list[int] = []
        key_pts: list[int] = []
        durations: dict[int, int] = {}
        try:
            for packet in container.demux(vs):
                if packet.pts is None or packet.size == 0:
                    continue
                all_pts.append(packet.pts)
                durations[packet.pts] = packet.duration or 0
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
        except av.error.FFmpegError as exc:
            raise UserError(f"{p} is damaged: reading packets failed ({exc})") from None
        if not all_pts:
            raise UserError(f"{p}: the video stream holds no frames")
        all_pts.sort()
        if len(set(all_pts)) != len(all_pts):
            raise UserError(f"{p}: the video stream repeats timestamps; remux it first")
        index = {v: i for i, v in enumerate(all_pts)}
        keyframes = sorted({index[k] for k in key_pts} | {0})
        tb = vs.time_base
        a, b = parse_range(frames, start_s, end_s, all_pts, tb)
        rate, base = vs.average_rate, vs.base_rate
        last = _last_duration(vs, all_pts[-1], durations)
        if last is None and len(all_pts) > 1:
            last = all_pts[-1] - all_pts[-2]
        color = {
            "range": int(cc.color_range or 0),
            "primaries": int(cc.color_primaries or 2),
            "trc": int(cc.color_trc or 2),
            "space": int(cc.colorspace or 2),
        }
        if first_frames is None:  # after the colour tags: decoding may rewrite them
            first_frames = read_first_frames(container, vs)
        width = cc.width if cc.width > 0 else first_frames.width
        height = cc.height if cc.height > 0 else first_frames.height
        pix_fmt = cc.format.name if cc.format is not None else first_frames.pix_fmt
        return VideoInfo(
            path=str(p),
            kind="video",
            container=container.format.name,
            width=width,
            height=height,
            frames=b - a,
            first=a,
            pts=tuple(all_pts[a:b]),
            keyframes=tuple(keyframes),
            time_base=(tb.numerator, tb.denominator),
            avg_rate=(rate.numerator, rate.denominator) if rate else None,
            video_index=vs.index,
            codec=cc.name,
            pix_fmt=pix_fmt,
            bit_depth=_bit_depth(av.VideoFormat(pix_fmt)),
            color=color,
            rotation=first_frames.rotation,
            streams=tuple(_stream_info(s) for s in container.streams),
            metadata=dict(container.metadata),
            end_pts=all_pts[b] if b < len(all_pts) else None,
            base_rate=(base.numerator, base.denominator) if base else None,
            last_duration=last,
            chapters=probe_chapters(container.chapters()),
            before_pts=all_pts[a - 1] if a > 0 else None,
            sar=first_frames.sar,
            field_order=int(cc.field_order or 0),
            interlaced=first_frames.interlaced,
            mastering=first_frames.mastering,
            cll=first_frames.cll,
            dynamic_hdr=first_frames.dynamic,
            timecode=find_timecode(
                vs.metadata,
                [s.metadata for s in container.streams if s.type == "data"],
                container.metadata,
            ),
        )


def segment_target_frames(info: VideoInfo, segment_s: float, segment_frames: int | None) -> int:
    """Frames per segment: ``segment_frames``, else ``segment_s`` at the source's rate."""
    if segment_frames:
        return segment_frames
    rate = Fraction(*info.avg_rate) if info.avg_rate else Fraction(30)
    return max(1, round(segment_s * rate))


def plan_segments(
    info: VideoInfo, min_frames: int, max_frames: int | None = None
) -> list[tuple[int, int]]:
    """[start, end) ranges of selected-frame indices: each starts at a keyframe and is
    at least ``min_frames`` long (except the last). A GOP longer than ``max_frames``
    (default: unbounded) is cut mid-GOP every ``min_frames`` frames; a segment that
    starts mid-GOP decodes from the keyframe before it (``ingest_segment_task``)."""
    a, b = info.first, info.first + info.frames
    cuts = [k for k in info.keyframes if a < k < b]
    limit = max_frames if max_frames is not None else b - a
    bounds, last = [a], a
    while True:
        nxt = next((k for k in cuts if k - last >= min_frames), None)
        if nxt is not None and nxt - last <= limit:
            cut = nxt
        elif b - last > limit:
            cut = last + min_frames
        else:
            break
        if cut >= b:
            break
        bounds.append(cut)
        last = cut
    bounds.append(b)
    return [(s - a, e - a) for s, e in zip(bounds, bounds[1:], strict=False)]
