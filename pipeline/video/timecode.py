"""Start timecode: found in the source, moved for a range, written on the output.

Cameras and NLEs record where a clip sits on the production's clock as a SMPTE timecode
(``HH:MM:SS:FF``, ``;`` before the frames for drop-frame): a MOV/MP4 ``tmcd`` track,
a ``timecode`` stream or container tag, a Matroska ``TIMECODE`` tag. FFmpeg's demuxers
report all of them as a ``timecode`` tag; its MOV/MP4 muxers write a ``tmcd`` track from
the video stream's tag and Matroska a tag, so the output needs only the tag. The ``tmcd``
track itself is therefore never copied as a data stream. A range that starts at frame N
starts N frames later on the clock (frame 25 of a 25 fps 01:00:00:00 clip: 01:00:01:00).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fractions import Fraction

from pipeline.errors import UserError

_TC = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})([:;.,])(\d{2,3})$")


def find_timecode(
    video_tags: Mapping[str, str],
    other_tags: Iterable[Mapping[str, str]],
    format_tags: Mapping[str, str],
) -> str | None:
    """The source's start timecode: the video stream's tag, else a data (``tmcd``)
    stream's, else the container's; None when there is none."""
    for tags in (video_tags, *other_tags, format_tags):
        value = tag_value(tags)
        if value:
            return value
    return None


def tag_value(tags: Mapping[str, str]) -> str | None:
    """The ``timecode`` tag of ``tags`` whatever its case (Matroska: ``TIMECODE``)."""
    for key, value in tags.items():
        if key.lower() == "timecode" and value:
            return str(value).strip()
    return None


def is_timecode_track(stream_type: str, tags: Mapping[str, str]) -> bool:
    """A data stream that only holds the start timecode (MOV/MP4 ``tmcd``)."""
    return stream_type == "data" and tag_value(tags) is not None


def timecode_fps(rate: Fraction) -> int:
    """Frames per timecode second: the nominal rate (30 for 30000/1001)."""
    return max(1, round(rate))


def to_frames(timecode: str, rate: Fraction) -> int:
    """Frame count of ``timecode`` since 00:00:00:00 at ``rate`` (drop-frame aware)."""
    m = _TC.match(timecode)
    if not m:
        raise UserError(f"the source's timecode {timecode!r} is not HH:MM:SS:FF")
    hh, mm, ss, sep, ff = int(m[1]), int(m[2]), int(m[3]), m[4], int(m[5])
    fps = timecode_fps(rate)
    frames = ((hh * 60 + mm) * 60 + ss) * fps + ff
    if sep in ";,":
        drop = 2 * (fps // 30)
        minutes = hh * 60 + mm
        frames -= drop * (minutes - minutes // 10)
    return frames


def from_frames(frames: int, rate: Fraction, drop_frame: bool) -> str:
    """``frames`` since 00:00:00:00 as a timecode (wrapping at 24 h)."""
    fps = timecode_fps(rate)
    if drop_frame:
        drop = 2 * (fps // 30)
        per_10min = fps * 600 - 9 * drop
        per_min = fps * 60 - drop
        tens, rest = divmod(frames, per_10min)
        extra = 0 if rest < drop else drop * ((rest - drop) // per_min)
        frames += 9 * drop * tens + extra
    ff = frames % fps
    total_s = frames // fps
    hh, mm, ss = (total_s // 3600) % 24, (total_s // 60) % 60, total_s % 60
    return f"{hh:02d}:{mm:02d}:{ss:02d}{';' if drop_frame else ':'}{ff:02d}"


def shifted(timecode: str, frames: int, rate: Fraction) -> str:
    """``timecode`` moved on by ``frames`` frames at ``rate`` (a range's first frame)."""
    if not frames:
        return timecode
    drop = ";" in timecode or "," in timecode
    return from_frames(to_frames(timecode, rate) + frames, rate, drop)
