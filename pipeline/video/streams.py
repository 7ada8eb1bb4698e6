"""What a video output keeps of its source besides pixels and packets: tags, dispositions,
chapters, frame durations and the declared frame rate.

The probe (``pipeline.video.probe``) records them; the muxing code
(``pipeline.video.container`` and the assemble step) applies them with the small
functions here.
Keys that describe the old file rather than its content (the muxer's brands, encoder
names, Matroska's per-track statistics, the muxers' default handler names) are dropped:
the new muxer writes its own and stale copies would lie. Titles are normalised on the way
in (MP4's per-track ``name`` is Matroska's ``title``); MP4/MOV outputs also get the title
as the handler name, which is where most MP4 tools show a track's name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

# Written by muxers and encoders about the file itself; never copied.
GENERATED_KEYS = frozenset(
    {
        "major_brand",
        "minor_version",
        "compatible_brands",
        "encoder",
        "duration",
        "vendor_id",
        "bps",
        "number_of_frames",
        "number_of_bytes",
    }
)
GENERATED_PREFIXES = ("_statistics_",)
# FFmpeg's MP4/MOV muxer writes these when a track has no handler name of its own.
DEFAULT_HANDLERS = frozenset({"VideoHandler", "SoundHandler", "SubtitleHandler", "DataHandler"})
MP4_LIKE = frozenset({"mp4", "mov"})


def content_tags(metadata: Mapping[str, str]) -> dict[str, str]:
    """The tags of a container or stream that describe its content, keys as found except
    MP4's track ``name``, which becomes ``title``."""
    out: dict[str, str] = {}
    for key, value in metadata.items():
        low = key.lower()
        if low in GENERATED_KEYS or low.startswith(GENERATED_PREFIXES):
            continue
        if low == "handler_name" and value in DEFAULT_HANDLERS:
            continue
        out[key] = value
    names = [k for k in out if k.lower() == "name"]
    if names and not any(k.lower() == "title" for k in out):
        out["title"] = out.pop(names[0])
    return out


def stream_tags_for(tags: Mapping[str, str], out_format: str) -> dict[str, str]:
    """``content_tags`` output as ``out_format`` ("mp4", "mov", "matroska") should get it."""
    out = dict(tags)
    lower = {k.lower(): k for k in out}
    if out_format in MP4_LIKE and "title" in lower and "handler_name" not in lower:
        out["handler_name"] = out[lower["title"]]
    return out


# The dispositions each output container reads back as written (FFmpeg's muxers and
# demuxers; tests/test_video_metadata.py checks this table against them). Others are
# lost on the way: refused at plan time, or left out on request (--drop-unsupported).
# MP4/MOV also mark the first track of a kind default when none is (the track-enabled
# flag), and MP4 reads hearing-impaired/visual-impaired back with their aliases
# captions/descriptions as well.
_MATROSKA = frozenset(
    {"default", "dub", "original", "comment", "forced", "hearing_impaired", "visual_impaired"}
)
_MP4 = frozenset(
    {"default", "dub", "comment", "forced", "hearing_impaired", "visual_impaired", "captions",
     "descriptions"}
)  # fmt: skip
KEPT_DISPOSITIONS: dict[str, dict[str, frozenset[str]]] = {
    "matroska": {"audio": _MATROSKA, "subtitle": _MATROSKA | {"descriptions"}},
    "mp4": {"audio": _MP4, "subtitle": _MP4},
    "mov": {kind: frozenset({"default"}) for kind in ("audio", "subtitle")},
}
# Two names for one meaning (MP4 writes both); either one kept keeps the meaning.
DISPOSITION_ALIASES = {
    "captions": "hearing_impaired",
    "hearing_impaired": "captions",
    "descriptions": "visual_impaired",
    "visual_impaired": "descriptions",
}


def disposition_names(value: int) -> list[str]:
    """The flag names set in a disposition value (PyAV's ``Disposition`` names)."""
    import av

    return [f.name for f in av.stream.Disposition if f.value and value & f.value]


def kept_disposition(value: int, stream_type: str, out_format: str) -> tuple[int, list[str]]:
    """(what of disposition ``value`` ``out_format`` can hold, names of the flags it
    cannot). Video and data streams are held to the audio row."""
    import av

    kept = KEPT_DISPOSITIONS[out_format]["subtitle" if stream_type == "subtitle" else "audio"]
    if stream_type == "video" and out_format == "mp4":
        kept = kept | {"attached_pic"}  # cover art (MP4's covr); Matroska: an attachment
    names = disposition_names(value)
    held = {n for n in names if n in kept}
    lost = [n for n in names if n not in held and DISPOSITION_ALIASES.get(n) not in held]
    bits = 0
    for n in held:
        bits |= av.stream.Disposition[n].value
    return bits, lost


def copy_stream_meta(src: Mapping[str, Any], dst: Any, out_format: str) -> None:
    """Give output stream ``dst`` (a PyAV stream, before the header is written) the tags
    and disposition of source stream ``src`` (a probe entry: ``metadata``, ``disposition``)
    that ``out_format`` can hold (plan time refused or accepted the rest)."""
    tags = stream_tags_for(content_tags(src.get("metadata") or {}), out_format)
    dst.metadata.update(tags)
    kind = src.get("type") or "audio"
    dst.disposition = kept_disposition(int(src.get("disposition") or 0), kind, out_format)[0]


def container_tags(metadata: Mapping[str, str]) -> dict[str, str]:
    """Container-level tags to copy (title, comment, creation_time, ...)."""
    return content_tags(metadata)


def probe_chapters(chapters: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """PyAV's ``container.chapters()`` as plain data: start/end in seconds (Fraction)."""
    out = []
    for ch in chapters:
        tb = Fraction(ch["time_base"]) if ch.get("time_base") else Fraction(1)
        out.append(
            {
                "start_s": ch["start"] * tb,
                "end_s": ch["end"] * tb,
                "metadata": dict(ch.get("metadata") or {}),
            }
        )
    return tuple(out)


def chapters_for_output(
    chapters: Sequence[Mapping[str, Any]],
    t_start: Fraction,
    t_end: Fraction | None,
    time_base: Fraction = Fraction(1, 1000),
    delay: Fraction = Fraction(0),
) -> list[dict[str, Any]]:
    """Chapters (``probe_chapters`` form) of the selection [t_start, t_end) as
    ``set_chapters`` wants them: clipped, shifted to start at ``delay`` (where the
    output's content starts), numbered 1.. (Matroska needs non-zero ids); chapters
    wholly outside the selection are left out."""
    out = []
    for ch in chapters:
        start, end = ch["start_s"], ch["end_s"]
        if (start < t_start and end <= t_start) or (t_end is not None and start >= t_end):
            continue
        start = max(start, t_start) - t_start + delay
        end = (end if t_end is None else min(end, t_end)) - t_start + delay
        out.append(
            {
                "id": len(out) + 1,
                "start": round(start / time_base),
                "end": round(max(end, start) / time_base),
                "time_base": time_base,
                "metadata": dict(ch["metadata"]),
            }
        )
    return out


def frame_durations(pts: Sequence[int], end_pts: int) -> list[int]:
    """Each frame's real duration (time base units): the gap to the next frame's pts, and
    for the last frame the gap to ``end_pts`` (where the selection or stream ends)."""
    ends = [*pts[1:], end_pts]
    return [max(b - a, 1) for a, b in zip(pts, ends, strict=True)]


def rescale_ts(ts: int, src_tb: Fraction, dst_tb: Fraction) -> int:
    """``ts`` from ``src_tb`` to ``dst_tb``, rounded half away from zero like FFmpeg's
    av_rescale_q, so a duration computed here matches what the muxer stores."""
    q = Fraction(ts) * Fraction(src_tb) / Fraction(dst_tb)
    return int(math.copysign(math.floor(abs(q) + Fraction(1, 2)), q))


def is_cfr(pts: Sequence[int], tolerance: int = 1) -> bool:
    """Whether the frame gaps are all equal within ``tolerance`` ticks (Matroska's ms
    rounding makes 23.976 fps gaps alternate 41/42)."""
    gaps = [b - a for a, b in zip(pts, pts[1:], strict=False)]
    return not gaps or max(gaps) - min(gaps) <= tolerance


def declared_rate(
    avg_rate: Fraction | None, base_rate: Fraction | None, pts: Sequence[int]
) -> Fraction | None:
    """The frame rate to declare for the output stream: the source's average rate for
    constant-rate video; for variable-rate video the source's base rate (its timing grid,
    r_frame_rate), which is what Matroska's default duration means, the real durations
    going on every packet. MP4/MOV store no rate; readers derive it from the timing."""
    if is_cfr(pts) or not base_rate:
        return avg_rate or base_rate
    return base_rate
