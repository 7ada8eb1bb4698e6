"""Assemble a video: join the encoded segments and remux the other streams, once.

Runs as one CPU task when every segment is encoded. The output's video stream is set up
exactly as the segments' encoders were (``segments.video_stream``), so its codec
parameters are theirs, and the segments' packets are muxed as they are, without
re-encoding. Decode timestamps are planned for the whole stream: each packet in decode
order gets the presentation time ``D`` places earlier in the sorted presentation times,
where ``D`` is the largest reorder delay any segment's encoder used (its B-frames), so
dts rise strictly across segment joins and never pass their packet's pts. Every packet
lasts its own frame's real duration (VFR stays VFR). Audio, subtitle and data packets
are copied byte for byte, interleaved by time, with the selected range's span.
"""

from __future__ import annotations

import bisect
import logging
from fractions import Fraction
from typing import Any

from pipeline.errors import UserError
from pipeline.store.outputs import finish_staged, staging_path
from pipeline.store.urls import av_input
from pipeline.video.container import (
    container_format,
    is_attachment,
    is_cover,
    matroska_lead,
    output_durations,
    source_stream,
)
from pipeline.video.encode import (
    SegmentPackets,
    output_timecode,
    pts_offset,
    read_segment,
    set_timecode,
    video_stream,
)
from pipeline.video.hdr_container import hdr_video_stream, takes_template
from pipeline.video.probe import VideoInfo
from pipeline.video.streams import (
    chapters_for_output,
    container_tags,
    copy_stream_meta,
    rescale_ts,
)
from pipeline.video.tasks import Assemble, Assembled, VideoJob
from pipeline.video.timecode import tag_value

log = logging.getLogger(__name__)

# Cover art codec -> (file extension, MIME type) for a Matroska attachment without a name.
COVER_TYPES = {
    "png": ("png", "image/png"),
    "mjpeg": ("jpg", "image/jpeg"),
    "bmp": ("bmp", "image/bmp"),
    "webp": ("webp", "image/webp"),
    "gif": ("gif", "image/gif"),
}


def reorder_delay(pts_in_decode_order: list[int]) -> int:
    """The smallest ``d`` such that, with ``Q`` the sorted pts, ``Q[i - d] <= pts[i]``
    for every decode position ``i``: how many frames the decoder must hold back."""
    q = sorted(pts_in_decode_order)
    return max(
        (i + 1 - bisect.bisect_right(q, p) for i, p in enumerate(pts_in_decode_order)),
        default=0,
    )


def plan_dts(segments: list[list[int]], first_duration: int) -> list[list[int]]:
    """Decode timestamps for the joined stream (see the module's docstring)."""
    delay = max((reorder_delay(s) for s in segments), default=0)
    order = sorted(p for s in segments for p in s)
    out, j = [], 0
    for s in segments:
        dts = []
        for _ in s:
            k = j - delay
            dts.append(order[k] if k >= 0 else order[0] + k * first_duration)
            j += 1
        out.append(dts)
    return out


class Remuxer:
    """The non-video streams, copied packet for packet (with their tags and
    dispositions) up to a time; moved back by the range start and on by ``lead``."""

    def __init__(self, out: Any, info: VideoInfo, remux: list[int], lead: Fraction) -> None:
        import av

        self.info, self.out = info, out
        self.copied = 0
        self.src = av.open(av_input(info.path)) if remux else None
        self.map: dict[int, Any] = {}
        self.packets: Any = iter(())
        if self.src is not None:
            for idx in remux:
                entry, stream = source_stream(info, idx), self.src.streams[idx]
                if out.format.name == "matroska" and (is_cover(entry) or is_attachment(entry)):
                    self._attach(stream, entry)
                    continue
                copy = out.add_stream_from_template(stream)
                copy_stream_meta(entry, copy, out.format.name)
                self.map[idx] = copy
            if self.map:
                self.packets = self.src.demux(*[self.src.streams[i] for i in self.map])
        self.pending: Any = None
        self.t_start = pts_offset(info) * info.tb
        self.t_end = info.end_pts * info.tb if info.end_pts is not None else None
        self.ranged = info.first > 0 or info.end_pts is not None
        self.shift = self.t_start - lead

    def _attach(self, stream: Any, entry: dict[str, Any]) -> None:
        """Copy an attachment, or cover art, as a Matroska attachment (written with the
        header): its file name, MIME type and bytes."""
        import av

        meta = entry.get("metadata") or {}
        if is_attachment(entry):
            data = bytes(stream.data)
            name = stream.name or meta.get("filename") or f"attachment{stream.index}"
            mimetype = stream.mimetype or meta.get("mimetype") or "application/octet-stream"
        else:  # the picture is the stream's one packet, which demuxing returns first
            with av.open(av_input(self.info.path)) as src:
                pic = src.streams[stream.index]
                packet = next((p for p in src.demux(pic) if p.size), None)
                if packet is None:
                    raise RuntimeError(f"cover art stream #{stream.index} has no picture")
                data = bytes(packet)
            ext, mime = COVER_TYPES.get(entry.get("codec") or "", ("bin", "image/unknown"))
            name = meta.get("filename") or f"cover.{ext}"
            mimetype = meta.get("mimetype") or mime
        self.out.add_attachment(name, mimetype, data)
        self.copied += 1

    @staticmethod
    def _time(packet: Any) -> Fraction | None:
        ts = packet.pts if packet.pts is not None else packet.dts
        return None if ts is None else ts * packet.time_base

    def until(self, t: Fraction | None) -> None:
        """Mux copied packets whose time is before ``t`` (source time; all when None)."""
        while True:
            if self.pending is None:
                self.pending = next(self.packets, None)
                if self.pending is None:
                    return
            packet = self.pending
            if packet.size == 0 and packet.pts is None and packet.dts is None:
                self.pending = None
                continue
            pt = self._time(packet)
            if t is not None and pt is not None and pt >= t:
                return
            self.pending = None
            if self.ranged and pt is not None:
                dur = (packet.duration or 0) * packet.time_base
                if pt + dur <= self.t_start or (self.t_end is not None and pt >= self.t_end):
                    continue  # outside the selected range
            if self.shift:
                shift = rescale_ts(self.shift, Fraction(1), packet.time_base)
                if packet.pts is not None:
                    packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
            packet.stream = self.map[packet.stream_index]
            self.out.mux(packet)
            self.copied += 1

    def close(self) -> None:
        if self.src is not None:
            self.src.close()


def assemble(task: Assemble, job: VideoJob) -> Assembled:
    """Join segment files 0..segments-1 into the staged output with the copied streams.
    ``job.threads`` must be the segments' encoder threads: some codecs write their
    settings into the stream's headers (x265 does)."""
    import av

    from pipeline.store.jobstore import JobStore

    info, cfg, target, pix_fmt, threads = job.info, job.video, job.staged, job.pix_fmt, job.threads
    remux, units = list(job.remux), task.segments
    store = JobStore.open(job.store_url)
    lay = store.layout
    segs: list[SegmentPackets] = [read_segment(store.segment_path(u)) for u in range(units)]
    tb, offset = info.tb, pts_offset(info)
    durations = output_durations(info, offset)
    dts_plan = plan_dts([s.pts for s in segs], durations[min(durations)])
    staged = staging_path(target)
    fmt = container_format(target)
    lead = matroska_lead(info, remux) if fmt == "matroska" else Fraction(0)
    ok = False
    try:
        out = av.open(staged, mode="w", format=fmt)
        out.metadata.update(container_tags(info.metadata))
        if tag_value(info.metadata):  # a container-level timecode moves with the range
            set_timecode(out.metadata, output_timecode(info))
        t_start = offset * tb
        t_end = info.end_pts * tb if info.end_pts is not None else None
        chapters = chapters_for_output(info.chapters, t_start, t_end, delay=lead)
        if chapters:
            out.set_chapters(chapters)
        size = (lay.width * lay.scale, lay.height * lay.scale)
        if takes_template(cfg.codec, info) and segs:  # HDR10 metadata in the container too
            vs = hdr_video_stream(out, info, cfg.codec, size, segs[0].extradata)
        else:
            vs = video_stream(out, info, cfg, size, pix_fmt, threads)
        if info.rotation:
            vs.set_display_rotation(info.rotation)
        remuxer = Remuxer(out, info, remux, lead)
        out.start_encoding()  # writes the header, which fixes the stream's time base
        out_tb = vs.time_base
        extradata = bytes(vs.codec_context.extradata or b"")
        if segs and segs[0].extradata and extradata != segs[0].extradata:
            raise UserError(  # a changed encoder build between runs, not a bug
                "the segments' encoder and the output stream disagree on the codec "
                "parameters (extradata); rerun with --restart"
            )
        frames = 0
        # MP4/MOV keep decode-time deltas as sample durations: the track ends at the last
        # dts plus the last packet's duration, shifted by the first dts. Give that last
        # packet what makes the track end where the last frame does (VFR: a gap among
        # the last frames otherwise goes missing).
        last_dur = None
        if fmt in ("mp4", "mov") and segs and segs[-1].pts:
            p_last = max(durations)
            last_dur = p_last + durations[p_last] - dts_plan[-1][-1] + dts_plan[0][0]
        for n_seg, (seg, dts) in enumerate(zip(segs, dts_plan, strict=True)):
            last_seg = n_seg == len(segs) - 1
            for k, ((data, pts, _, key), d) in enumerate(zip(seg.packets(), dts, strict=True)):
                remuxer.until((d + offset) * tb)
                # Each packet lasts until the next frame; times go to the output's time
                # base here, once, so rounding (Matroska's ms) cannot overlap frames.
                t = pts * tb + lead
                packet = av.Packet(data)
                packet.pts = rescale_ts(t, Fraction(1), out_tb)
                dur = durations.get(pts, 0)
                if last_dur is not None and last_seg and k == len(dts) - 1:
                    dur = last_dur
                end = rescale_ts(t + dur * tb, Fraction(1), out_tb)
                packet.duration = max(end - packet.pts, 1)
                packet.dts = rescale_ts(d * tb + lead, Fraction(1), out_tb)
                packet.is_keyframe = key
                packet.time_base = out_tb
                packet.stream = vs
                out.mux(packet)
                frames += 1
        remuxer.until(None)
        out.close()
        remuxer.close()
        ok = True
    finally:
        finish_staged(staged, target, ok=ok)
    return Assembled(frames, units, remuxer.copied)
