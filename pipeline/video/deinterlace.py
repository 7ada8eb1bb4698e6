"""Interlaced sources: deinterlaced with FFmpeg's ``bwdif`` before the model sees them.

An interlaced frame holds two fields taken 1/50 s (or 1/60 s) apart; upscaled as one
picture, the comb between them is blown up with it. Probe decides what a source is from
its decoded frames' flags (soft-telecined film is progressive frames with repeat flags:
progressive), and ``video.deinterlace`` what is done: ``auto`` runs bwdif on the frames
flagged interlaced of an interlaced source, one output frame per frame; ``frame`` does so
for every frame of any source; ``field`` gives one frame per field (25i -> 50p), with
each field's own time; ``off`` takes the frames as progressive.

bwdif computes a frame from it and its two neighbours, so a segment decodes one frame
beyond each end, feeds them to the filter and keeps only its own frames: segments
give exactly what deinterlacing the whole clip gives. The output is progressive.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from fractions import Fraction
from typing import Any

from pipeline.errors import UserError

log = logging.getLogger(__name__)

MODES = ("auto", "off", "frame", "field")
# AVFieldOrder as PyAV's codec context reports it.
FIELD_ORDERS = {
    1: "progressive",
    2: "top field first",
    3: "bottom field first",
    4: "top coded first, bottom field first",
    5: "bottom coded first, top field first",
}


def field_order_name(value: int) -> str:
    return FIELD_ORDERS.get(int(value or 0), "unknown field order")


def applied_mode(mode: str, interlaced: bool) -> str:
    """What is done: "" (frames as they are), "frame" or "field"."""
    if mode == "auto":
        return "frame" if interlaced else ""
    if mode == "off":
        return ""
    if mode in ("frame", "field"):
        return mode
    raise UserError(f"video.deinterlace must be one of {', '.join(MODES)}, got {mode!r}")


def plan_deinterlace(info: Any, mode: str) -> Any:
    """``info`` as the job sees it under ``video.deinterlace=mode``, with one log line
    saying what was detected and what is done. In field mode the frame list is one entry
    per field, in half the time base (every field's time exact)."""
    what = f"{field_order_name(info.field_order)}, " if info.interlaced else ""
    detected = f"interlaced ({what}frames flagged interlaced)" if info.interlaced else "progressive"
    done = applied_mode(mode, info.interlaced)
    if not done:
        action = "frames taken as they are" + (
            " (video.deinterlace=off: the comb between fields stays)" if info.interlaced else ""
        )
        log.info("deinterlace: %s is %s; %s", info.path, detected, action)
        return info
    per = "one frame per field" if done == "field" else "one frame per frame"
    log.info(
        "deinterlace: %s is %s; bwdif (%s, video.deinterlace=%s), output progressive",
        info.path,
        detected,
        per,
        mode,
    )
    info = replace(info, deinterlace=done, deint_all=mode != "auto")
    return as_fields(info) if done == "field" else info


def as_fields(info: Any) -> Any:
    """The frame list of ``info`` with one entry per field: time base halved, field one
    of a frame at twice its pts, field two halfway to the next frame."""
    src = list(info.pts)
    ends = [*src[1:], info.end_pts if info.end_pts is not None else None]
    last = info.last_duration or (src[-1] - src[-2] if len(src) > 1 else 1)
    pts: list[int] = []
    for p, n in zip(src, ends, strict=True):
        nxt = n if n is not None else p + last
        pts += [2 * p, p + nxt]
    num, den = info.time_base
    double = lambda r: (2 * r[0], r[1]) if r else None  # noqa: E731
    return replace(
        info,
        frames=2 * info.frames,
        first=2 * info.first,
        pts=tuple(pts),
        keyframes=tuple(2 * k for k in info.keyframes),
        time_base=(num, 2 * den),
        avg_rate=double(info.avg_rate),
        base_rate=double(info.base_rate),
        end_pts=2 * info.end_pts if info.end_pts is not None else None,
        fields=2,
    )


def source_pts(info: Any, k: int) -> int:
    """Source pts of selected source frame ``k`` (field mode: its first field's entry)."""
    return info.pts[k * info.fields] // info.fields


def _bwdif(frame: Any, info: Any) -> Any:
    import av

    graph = av.filter.Graph()
    src = graph.add_buffer(
        width=frame.width,
        height=frame.height,
        format=frame.format.name,
        time_base=Fraction(*info.time_base) / info.fields,
    )
    mode = "send_field" if info.deinterlace == "field" else "send_frame"
    deint = "all" if info.deint_all else "interlaced"
    flt = graph.add("bwdif", f"mode={mode}:parity=auto:deint={deint}")
    sink = graph.add("buffersink")
    src.link_to(flt)
    flt.link_to(sink)
    graph.configure()
    return graph


def _drain(graph: Any) -> list[Any]:
    import av

    out = []
    while True:
        try:
            out.append(graph.pull())
        except (av.error.BlockingIOError, av.error.EOFError):
            return out


def ingest_deinterlaced(info: Any, target: Any, start: int, end: int, to_array: Any) -> int:
    """Decode, deinterlace and store selected frames [start, end) of ``info`` (frames as
    the job counts them: fields in field mode); ``to_array(frame)`` gives the stored
    array. Returns how many frames were written."""
    import av

    from pipeline.store.urls import av_input

    n = info.fields
    k0, k1 = start // n, (end - 1) // n + 1  # selected source frames this segment needs
    selected = info.frames // n
    before = source_pts(info, k0 - 1) if k0 > 0 else info.before_pts
    after = (
        source_pts(info, k1)
        if k1 < selected
        else (info.end_pts // n if info.end_pts is not None else None)
    )
    index = {source_pts(info, k): k for k in range(k0, k1)}
    first = before if before is not None else source_pts(info, k0)
    last = after if after is not None else source_pts(info, k1 - 1)
    fed: list[int] = []
    outputs: list[Any] = []
    graph = None
    with av.open(av_input(info.path)) as container:
        vs = container.streams[info.video_index]
        vs.thread_type = "AUTO"
        container.seek(first, stream=vs, backward=True, any_frame=False)
        for frame in container.decode(vs):
            if frame.pts is None or frame.pts < first:
                continue
            if frame.pts > last:
                break
            if graph is None:
                graph = _bwdif(frame, info)
            fed.append(frame.pts)
            graph.push(frame)
            outputs += _drain(graph)
        if graph is not None:
            graph.push(None)
            outputs += _drain(graph)
    if len(outputs) != n * len(fed):
        raise RuntimeError(
            f"bwdif gave {len(outputs)} frames for {len(fed)} decoded frames "
            f"(segment {start}:{end})"
        )
    written = set()
    for j, frame in enumerate(outputs):
        k = index.get(fed[j // n])
        idx = None if k is None else k * n + j % n
        if idx is None or not start <= idx < end:
            continue
        target[idx] = to_array(frame)
        written.add(idx)
    if len(written) != end - start:
        missing = sorted(set(range(start, end)) - written)
        raise RuntimeError(
            f"frames {missing[0]}..{missing[-1]} ({len(missing)} frames) of segment "
            f"{start}:{end} did not decode"
        )
    return len(written)
