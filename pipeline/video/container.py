"""What the output video can be: container, pixel format, copied streams, timing.

Decided on the driver before any work (``plan``): the container from the extension, the
encoder's pixel format (10-bit in stays 10-bit), which streams (audio, subtitle, data,
cover art, attachments) and dispositions the container can hold. Used by the segment
encoders and the assembly (``segments``, ``assemble``): the declared frame rate, each
frame's real duration, and the lead a Matroska output needs so nothing starts before 0
(the stream metadata pieces are in ``pipeline/video/streams``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.formats import CONTAINER_SUFFIX, VIDEO_CONTAINERS
from pipeline.store.urls import av_input
from pipeline.video.probe import VideoInfo
from pipeline.video.streams import declared_rate, frame_durations, kept_disposition
from pipeline.video.timecode import is_timecode_track

log = logging.getLogger(__name__)


def container_format(path: str | Path) -> str:
    """The FFmpeg muxer of a video output path (``pipeline.formats``)."""
    return VIDEO_CONTAINERS[Path(path).suffix.lower()]


def _depth_and_chroma(pix_fmt: str) -> tuple[int, str]:
    import av

    fmt = av.VideoFormat(pix_fmt, 16, 16)  # a size, or every plane reports width 0
    depth = max(c.bits for c in fmt.components)
    chroma = "444"
    comps = fmt.components
    if len(comps) >= 3 and not fmt.is_rgb:
        w, h = comps[1].width, comps[1].height
        full_w, full_h = comps[0].width, comps[0].height
        chroma = "420" if (w < full_w and h < full_h) else "422" if w < full_w else "444"
    return depth, chroma


def choose_pix_fmt(codec: str, source_pix_fmt: str, requested: str | None) -> str:
    """The encoder pixel format: the user's, else the source's, else the codec's closest
    match with the same bit depth (10-bit in gives 10-bit out or a clear refusal)."""
    import av

    try:
        supported = [f.name for f in (av.Codec(codec, "w").video_formats or [])]
    except av.error.FFmpegError:
        raise UserError(f"video codec {codec!r} is not available in this PyAV build") from None
    except ValueError:
        raise UserError(f"unknown video codec {codec!r}") from None
    if requested:
        if supported and requested not in supported:
            raise UserError(
                f"codec {codec} cannot encode pixel format {requested}; it supports "
                f"{', '.join(supported)}"
            )
        return requested
    if not supported or source_pix_fmt in supported:
        return source_pix_fmt
    depth, chroma = _depth_and_chroma(source_pix_fmt)
    same_depth = [f for f in supported if _depth_and_chroma(f)[0] == depth]
    for f in same_depth:
        if _depth_and_chroma(f)[1] == chroma:
            return f
    if same_depth:
        return same_depth[0]
    raise UserError(
        f"codec {codec} cannot encode {depth}-bit video (source {source_pix_fmt}); choose "
        f"a codec that can (libx265, libx264, ffv1, prores_ks) or set --pix-fmt to convert"
    )


ATTACHED_PIC = 0x400  # AV_DISPOSITION_ATTACHED_PIC: cover art, one picture, no timing


def is_cover(entry: dict[str, Any]) -> bool:
    """A probe entry for cover art (an attached picture: MP4's covr, an image attached to
    a Matroska file)."""
    return entry["type"] == "video" and bool(int(entry.get("disposition") or 0) & ATTACHED_PIC)


def is_attachment(entry: dict[str, Any]) -> bool:
    """A probe entry that is a Matroska attachment (fonts for styled subtitles, ...)."""
    return entry["type"] == "attachment"


def timed_streams(info: VideoInfo, remux: Sequence[int]) -> list[int]:
    """The copied streams that carry timed packets (not cover art, not attachments)."""
    entries = [source_stream(info, i) for i in remux]
    return [e["index"] for e in entries if not (is_cover(e) or is_attachment(e))]


def _untimed_reason(entry: dict[str, Any], fmt: str, suffix: str) -> str | None:
    """Why ``fmt`` cannot hold cover art or an attachment (None: it can)."""
    if is_attachment(entry):
        if fmt == "matroska":
            return None
        return f" cannot be stored in {suffix} (only Matroska has attachments); use .mkv"
    return (
        None if fmt in ("matroska", "mp4") else f" cannot be stored in {suffix}; use .mp4 or .mkv"
    )


def _describe(entry: dict[str, Any]) -> str:
    name = (entry.get("metadata") or {}).get("filename")
    what = "cover art" if is_cover(entry) else entry["type"]
    codec = entry.get("codec")
    return ", ".join(x for x in (what, codec if not is_attachment(entry) else None, name) if x)


def remux_streams(info: VideoInfo, out_path: str, drop_unsupported: bool) -> list[int]:
    """Indices of the streams besides the video to copy (audio, subtitle, data, cover
    art, attachments); refuses (or drops, when asked) the ones the output container
    cannot hold. Timed streams are tried on a throwaway in-memory container."""
    import av

    keep = []
    fmt = container_format(out_path)
    suffix = Path(out_path).suffix
    with av.open(av_input(info.path)) as src:
        for stream in src.streams:
            if stream.index == info.video_index:
                continue
            entry = source_stream(info, stream.index)
            if stream.type == "video" and not is_cover(entry):
                reason = " is a second video track, which is not upscaled; it cannot be copied"
            elif is_cover(entry) or is_attachment(entry):
                reason = _untimed_reason(entry, fmt, suffix)
            elif stream.discard == av.stream.Discard.all:
                continue  # MP4/MOV's chapter text track: carried as the chapters
            elif is_timecode_track(stream.type, stream.metadata):
                continue  # MOV/MP4's tmcd track: carried as the video's timecode tag
            elif stream.type in ("audio", "subtitle", "data") and _muxer_takes(stream, fmt):
                reason = None
            else:
                reason = f" cannot be stored in {suffix}; {_other_containers(stream, fmt)}"
            if reason is None:
                keep.append(stream.index)
                continue
            what = f"stream #{stream.index} ({_describe(entry)})"
            if drop_unsupported:
                log.warning("dropping %s: it%s", what, reason.split(";")[0])
                continue
            raise UserError(f"{what}{reason}, or pass --drop-unsupported to leave it out")
    return keep


def _other_containers(stream: Any, fmt: str) -> str:
    """Which other output containers would take ``stream``, as advice."""
    can = [
        ext
        for other, ext in CONTAINER_SUFFIX.items()
        if other != fmt
        and stream.type in ("audio", "subtitle", "data")
        and _muxer_takes(stream, other)
    ]
    return f"use {' or '.join(can)}" if can else "no output container here can hold it"


def _muxer_takes(stream: Any, fmt: str) -> bool:
    """Whether a ``fmt`` muxer accepts a copy of ``stream`` (an in-memory trial)."""
    import io

    import av

    probe = av.open(io.BytesIO(), mode="w", format=fmt)
    try:
        probe.add_stream_from_template(stream)
        probe.start_encoding()
        return True
    except (av.error.FFmpegError, ValueError, TypeError):
        return False
    finally:
        try:
            probe.close()
        except Exception:  # closing a container whose header failed
            pass


def check_dispositions(
    info: VideoInfo, out_path: str, streams: Sequence[int], drop_unsupported: bool
) -> None:
    """Refuse (or, when asked, warn about) a disposition of the video stream or of a
    copied stream ``streams`` that the output container cannot hold."""
    fmt = container_format(out_path)
    for index in (info.video_index, *streams):
        src = source_stream(info, index)
        if is_cover(src) or is_attachment(src):
            continue  # what they are is kept as such, or refused by remux_streams
        _, lost = kept_disposition(int(src.get("disposition") or 0), src["type"], fmt)
        if not lost:
            continue
        flags = ", ".join(n.replace("_", "-") for n in lost)
        what = f"stream #{index} ({src['type']}) is marked {flags}"
        if drop_unsupported:
            log.warning("%s, which %s cannot hold: written without it", what, fmt)
            continue
        value = int(src["disposition"])
        can = [
            CONTAINER_SUFFIX[other]
            for other in ("matroska", "mp4")
            if other != fmt and not kept_disposition(value, src["type"], other)[1]
        ]
        hint = f"use {' or '.join(can)}, or " if can else ""
        raise UserError(
            f"{what}, which {Path(out_path).suffix} cannot hold; "
            f"{hint}pass --drop-unsupported to write it without"
        )


def source_stream(info: VideoInfo, index: int) -> dict[str, Any]:
    """The probe's entry for source stream ``index``."""
    return next(s for s in info.streams if s["index"] == index)


def output_rate(info: VideoInfo) -> Fraction | None:
    """The frame rate the output stream declares (``streammeta.declared_rate``)."""
    avg = Fraction(*info.avg_rate) if info.avg_rate else None
    base = Fraction(*info.base_rate) if info.base_rate else None
    return declared_rate(avg, base, info.pts)


def output_durations(info: VideoInfo, offset: int) -> dict[int, int]:
    """Output pts -> that frame's real duration, in the source time base."""
    if info.end_pts is not None:
        end = info.end_pts
    elif info.last_duration:
        end = info.pts[-1] + info.last_duration
    else:  # one frame and nothing recorded: one frame period, when known
        rate = output_rate(info)
        end = info.pts[-1] + (max(1, round(1 / (rate * info.tb))) if rate else 1)
    durations = frame_durations(info.pts, end)
    return {p - offset: d for p, d in zip(info.pts, durations, strict=True)}


def first_times(path: str, indices: list[int], t_start: Fraction = Fraction(0)) -> list[Fraction]:
    """When each listed stream starts (s, relative to ``t_start``) as Matroska will place
    it: its first packet still showing at ``t_start``, plus its codec delay (an audio
    track's priming, which Matroska records as CodecDelay and lets start before 0; an
    MP4 source has none recorded)."""
    import av

    found: dict[int, Fraction] = {}
    with av.open(av_input(path)) as src:
        for packet in src.demux(*[src.streams[i] for i in indices]):
            if packet.pts is None or packet.stream_index in found:
                continue
            start = packet.pts * packet.time_base
            if t_start and start + (packet.duration or 0) * packet.time_base <= t_start:
                continue  # over before the range: not copied
            cc = packet.stream.codec_context
            if packet.stream.type == "audio" and cc is not None and cc.sample_rate:
                start += Fraction(cc.delay or 0, cc.sample_rate)
            found[packet.stream_index] = start - t_start
            if len(found) == len(indices):
                break
    return list(found.values())


def matroska_lead(info: VideoInfo, remux: list[int]) -> Fraction:
    """Seconds to delay a whole Matroska output by, so that nothing starts before 0.

    Matroska cannot store times before 0 beyond a track's codec delay: an MP4 source's
    AAC priming starts at -1024 samples with none recorded, and a range keeps the packets
    (audio, a subtitle cue) still showing at its start, which begin before it. Left to
    the muxer, every stream is shifted by that lead rounded to ms, and the video's times,
    rounded once more, then alias at 23.976 fps (FFmpeg reads a repeated frame time).
    Shifting here, before the one rounding, keeps them exact.
    """
    t_start = info.pts[0] * info.tb if info.first > 0 else Fraction(0)
    starts = [info.pts[0] * info.tb - t_start]
    timed = timed_streams(info, remux)
    if timed:
        starts += first_times(info.path, timed, t_start)
    return max(Fraction(0), -min(starts))
