"""Video decode: a keyframe-aligned segment of frames, decoded straight into the store.

Ingest decodes segments in parallel tasks, each frame exactly once, addressed by its
index in the probe's sorted pts list (``pipeline.video.probe``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.store.urls import av_input
from pipeline.video.tasks import Segment, VideoJob

# AVColorSpace -> libswscale colourspace constant (SWS_CS_*), for RGB <-> YUV.
SWS_COLORSPACE = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}


def sws_colorspace(avcol: int) -> int:
    return SWS_COLORSPACE.get(int(avcol), 5)


def decode_array(frame: Any, dtype: str, color: dict[str, int]) -> np.ndarray:
    """Decoded frame -> (H, W, 3) RGB, uint8 or uint16, using the source's matrix/range."""
    fmt = "rgb48le" if dtype == "uint16" else "rgb24"
    rng = color.get("range") or None
    return frame.to_ndarray(
        format=fmt,
        src_colorspace=sws_colorspace(color.get("space", 2)),
        src_color_range=rng,
    )


def decode_segment(task: Segment, job: VideoJob) -> int:
    """Decode the segment's frames [start, end) into ``input``; returns how many were
    written.

    Seeks to the keyframe at or before the segment's first frame, decodes (flushing the
    decoder at the end of the stream), and keeps exactly the frames whose pts fall in
    the segment. Frames before the segment (leading B-frames of an open GOP, or the
    head of a GOP cut by --frames) are decoded and dropped.
    """
    import av

    from pipeline.store.jobstore import JobStore

    info, start, end = job.info, task.start, task.end
    store = JobStore.open(job.store_url)
    target = store.array("input")
    if info.deinterlace:
        from pipeline.video.deinterlace import ingest_deinterlaced

        return ingest_deinterlaced(
            info, target, start, end, lambda f: decode_array(f, info.dtype, info.color)
        )
    want = {info.pts[i]: i for i in range(start, end)}
    stop_pts = info.pts[end] if end < info.frames else info.end_pts
    written = 0
    with av.open(av_input(info.path)) as container:
        vs = container.streams[info.video_index]
        vs.thread_type = "AUTO"
        container.seek(info.pts[start], stream=vs, backward=True, any_frame=False)
        for frame in container.decode(vs):
            if frame.pts is None:
                continue
            if stop_pts is not None and frame.pts >= stop_pts:
                break
            idx = want.pop(frame.pts, None)
            if idx is None:
                continue
            target[idx] = decode_array(frame, info.dtype, info.color)
            written += 1
            if not want:
                break
    if want:
        missing = sorted(want.values())
        raise RuntimeError(
            f"frames {missing[0]}..{missing[-1]} ({len(missing)} frames) of segment "
            f"{start}:{end} did not decode"
        )
    return written
