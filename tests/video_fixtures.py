"""Tiny real encoded video files for tests, written with PyAV (no ffmpeg CLI), and probes.

Every generator writes one small clip (96x64 by default, 12-30 frames) whose frames all
differ (a gradient that shifts each frame plus a moving square whose brightness depends
on the frame number) and returns the ``Path`` written. Container by extension: ``.mp4``,
``.mov`` or ``.mkv``.

Timing: the video stream's time base is set explicitly (``default_time_base(rate)``:
1/30000 for 30 fps, 1/24000 for 24000/1001, ...), so every CFR frame pts is an exact
multiple of 1/rate. What comes back from the file is in the *container's* time base: MP4
and MOV keep a time base of 1/N with N >= 10000 as is (smaller ones are doubled until
they reach 10000), Matroska always uses 1/1000 (so 1/rate is rounded to the ms there).
``expected_pts(times, time_base)`` gives the pts a reader should see for given times.

Helpers for assertions: ``probe_summary(path)`` (demux only; one frame is decoded for the
rotation) and ``decode_frames(path)`` (rgb24 / rgb48le numpy arrays, display order, not
rotated).

PyAV 18 notes: ``stream.time_base`` and ``codec_context.time_base`` are both set before
the first encode; libx264/libx265 return packets with duration 0, so the writers set them;
subtitles are muxed as hand-made ``av.Packet``s on ``add_mux_stream("subrip")`` (no
encoder); ``VideoStream.set_display_rotation`` survives in MP4, MOV and MKV and reads back
only through decoded ``VideoFrame.rotation`` (PyAV has no stream side-data reader).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# AVColor* values (libavutil/pixfmt.h) used for the tags.
RANGE_MPEG = 1  # limited / tv
RANGE_JPEG = 2  # full / pc
PRI_BT709 = 1
PRI_BT2020 = 9
TRC_BT709 = 1
TRC_SMPTE2084 = 16  # PQ
TRC_ARIB_STD_B67 = 18  # HLG
SPC_BT709 = 1
SPC_BT2020_NCL = 9

BT709_TAGS = {
    "color_primaries": PRI_BT709,
    "color_trc": TRC_BT709,
    "colorspace": SPC_BT709,
    "color_range": RANGE_MPEG,
}
HDR10_TAGS = {
    "color_primaries": PRI_BT2020,
    "color_trc": TRC_SMPTE2084,
    "colorspace": SPC_BT2020_NCL,
    "color_range": RANGE_MPEG,
}
HLG_TAGS = {**HDR10_TAGS, "color_trc": TRC_ARIB_STD_B67}

DEFAULT_CRF = 12  # near the floor set by 4:2:0 chroma on this content, files ~10-30 kB
AUDIO_RATE = 48000
AUDIO_FRAME = 1024  # AAC frame size

DEFAULT_SUBTITLES: tuple[tuple[float, float, str], ...] = (
    (0.0, 0.2, "first cue"),
    (0.25, 0.15, "second cue\nwith two lines"),
    (0.5, 0.2, "third cue: ümlaut & <i>italic</i>"),
)


# --------------------------------------------------------------------------------------
# Content and timing helpers


def frame_rgb(index: int, width: int, height: int, depth: int = 8) -> np.ndarray:
    """The synthetic picture of frame ``index``: HxWx3 uint8 (depth 8) or uint16 (depth 16).

    A diagonal gradient shifted by 5 px per frame, a vertical ramp, and a 12x12 square
    that moves 3 px right / 2 px down per frame with a frame-dependent brightness.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = ((x + y + 5.0 * index) % 64.0) / 63.0
    g = y / max(height - 1, 1)
    b = np.full_like(x, 0.25 + 0.5 * ((index * 7) % 16) / 15.0)
    img = np.stack([r, g, b], axis=-1)
    side = min(12, width // 4, height // 4)
    sx = (3 * index) % max(width - side, 1)
    sy = (2 * index) % max(height - side, 1)
    img[sy : sy + side, sx : sx + side, :] = 0.5 + 0.5 * ((index * 5) % 11) / 10.0
    img = np.clip(img, 0.0, 1.0)
    if depth == 16:
        return np.rint(img * 65535.0).astype(np.uint16)
    return np.rint(img * 255.0).astype(np.uint8)


def default_time_base(rate: Fraction | int) -> Fraction:
    """1/N with N a multiple of ``rate.numerator`` and >= 10000 (MP4 keeps it as is)."""
    rate = Fraction(rate)
    den = rate.numerator
    while den < 10000:
        den *= 10
    return Fraction(1, den)


def cfr_times(frames: int, rate: Fraction | int) -> list[Fraction]:
    """Exact presentation times (s) of ``frames`` CFR frames at ``rate``."""
    rate = Fraction(rate)
    return [Fraction(i) / rate for i in range(frames)]


def vfr_times(frames: int = 20, long_gap: Fraction = Fraction(1, 2)) -> list[Fraction]:
    """Irregular times: gaps alternate 1/30 s and 1/15 s, with one ``long_gap`` at the middle."""
    times = [Fraction(0)]
    for i in range(1, frames):
        if i == frames // 2:
            gap = Fraction(long_gap)
        else:
            gap = Fraction(1, 30) if i % 2 else Fraction(1, 15)
        times.append(times[-1] + gap)
    return times


def dropped_frame_times(frames: int = 30, rate: Fraction | int = 30) -> list[Fraction]:
    """Times of a ``rate`` clip of ``frames`` frames with every third frame dropped (the
    originals' times kept): gaps alternate 1/rate and 2/rate, average rate 2/3 of it."""
    rate = Fraction(rate)
    return [Fraction(i) / rate for i in range(frames) if i % 3 != 2]


def expected_pts(times: Sequence[Fraction], time_base: Fraction) -> list[int]:
    """The pts a reader sees for exact ``times`` in a stream of ``time_base`` (rounded half
    away from zero like av_rescale_q, which only matters for Matroska's 1/1000)."""
    out = []
    for t in times:
        q = Fraction(t) / Fraction(time_base)
        out.append(math.floor(q + Fraction(1, 2)))
    return out


# --------------------------------------------------------------------------------------
# Writers


def _container_format(path: Path) -> str | None:
    ext = path.suffix.lower()
    return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(ext)


def _open_output(path: Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = _container_format(path)
    if fmt is None:
        raise ValueError(f"unsupported extension {path.suffix!r} (use .mp4, .mov or .mkv)")
    # fflags=+bitexact drops the muxer's version string / creation time: byte-stable files.
    return av.open(str(path), mode="w", format=fmt, options={"fflags": "+bitexact"})


def _add_video(
    container,
    *,
    codec: str,
    width: int,
    height: int,
    rate: Fraction,
    time_base: Fraction,
    pix_fmt: str,
    gop: int,
    bframes: bool,
    color: dict | None,
    crf: int,
):
    nb = 2 if bframes else 0
    if codec == "libx264":
        options = {
            "preset": "veryfast",
            "crf": str(crf),
            "x264-params": (
                f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={nb}:threads=1"
                ":sliced-threads=0:lookahead-threads=1"
            ),
        }
    elif codec == "libx265":
        options = {
            "preset": "ultrafast",
            "crf": str(crf),
            "x265-params": (
                f"log-level=error:keyint={gop}:min-keyint={gop}:scenecut=0:bframes={nb}"
                ":pools=none:frame-threads=1:info=0"
            ),
        }
    else:
        options = {"g": str(gop), "bf": str(nb)}
    stream = container.add_stream(codec, rate=rate, options=options)
    stream.width = width
    stream.height = height
    stream.pix_fmt = pix_fmt
    stream.time_base = time_base
    ctx = stream.codec_context
    ctx.time_base = time_base
    ctx.framerate = rate
    ctx.gop_size = gop
    ctx.max_b_frames = nb
    ctx.thread_count = 1
    for key, value in (color or {}).items():
        setattr(ctx, key, value)
    return stream


def _make_video_frame(index: int, width: int, height: int, pix_fmt: str, color: dict | None):
    deep = av.VideoFormat(pix_fmt).components[0].bits > 8
    rgb = frame_rgb(index, width, height, depth=16 if deep else 8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if deep else "rgb24")
    color = color or {}
    spc = color.get("colorspace")
    # swscale matrix: BT.709 / BT.2020 when tagged so, BT.601 otherwise (its default).
    dst_spc = {SPC_BT709: "itu709", SPC_BT2020_NCL: "bt2020"}.get(spc, "itu601")
    rng = "JPEG" if color.get("color_range") == RANGE_JPEG else "MPEG"
    out = frame.reformat(
        format=pix_fmt, src_colorspace="itu601", dst_colorspace=dst_spc, dst_color_range=rng
    )
    for key, value in color.items():
        setattr(out, key, value)
    return out


def _add_audio(container, channels: int):
    stream = container.add_stream("aac", rate=AUDIO_RATE)
    stream.layout = "stereo" if channels == 2 else "mono"
    stream.time_base = Fraction(1, AUDIO_RATE)
    stream.codec_context.time_base = Fraction(1, AUDIO_RATE)
    return stream


def _audio_frames(duration: Fraction, channels: int, freq: float = 440.0):
    """fltp sine frames (1024 samples, the last one shorter) covering ``duration``."""
    total = int(round(Fraction(duration) * AUDIO_RATE))
    layout = "stereo" if channels == 2 else "mono"
    start = 0
    while start < total:
        n = min(AUDIO_FRAME, total - start)
        t = (np.arange(start, start + n, dtype=np.float64)) / AUDIO_RATE
        tone = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        data = np.stack([tone * (1.0 - 0.5 * c) for c in range(channels)])
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="fltp", layout=layout)
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = Fraction(1, AUDIO_RATE)
        yield frame
        start += n


def _with_durations(packets, durations: dict[int, int]):
    for pkt in packets:
        if pkt.pts is not None and pkt.pts in durations:
            pkt.duration = durations[pkt.pts]
    return packets


def _apply_tags(container, streams: dict, tags: dict) -> None:
    """``tags`` (see ``make_tagged_clip``) onto the container and its streams, before
    the header is written."""
    container.metadata.update(tags.get("container", {}))
    chapters = [
        {
            "id": i + 1,
            "start": round(Fraction(start) * 1000),
            "end": round(Fraction(end) * 1000),
            "time_base": Fraction(1, 1000),
            "metadata": {"title": title},
        }
        for i, (start, end, title) in enumerate(tags.get("chapters", ()))
    ]
    if chapters:
        container.set_chapters(chapters)
    for kind, stream in streams.items():
        if stream is None or kind not in tags:
            continue
        stream.metadata.update(tags[kind].get("metadata", {}))
        if "disposition" in tags[kind]:
            stream.disposition = tags[kind]["disposition"]


def _write(
    path: Path,
    *,
    times: Sequence[Fraction],
    end_time: Fraction,
    width: int,
    height: int,
    rate: Fraction,
    time_base: Fraction | None,
    codec: str,
    pix_fmt: str,
    gop: int,
    bframes: bool,
    audio: bool,
    audio_channels: int,
    color: dict | None = None,
    rotation: float | None = None,
    subtitles: Sequence[tuple[float, float, str]] | None = None,
    crf: int = DEFAULT_CRF,
    tags: dict | None = None,
) -> Path:
    path = Path(path)
    tb = Fraction(time_base) if time_base is not None else default_time_base(rate)
    pts = expected_pts(times, tb)
    if any(b <= a for a, b in zip(pts, pts[1:], strict=False)):
        raise ValueError("frame times must be strictly increasing in the time base")
    with _open_output(path) as container:
        vs = _add_video(
            container,
            codec=codec,
            width=width,
            height=height,
            rate=rate,
            time_base=tb,
            pix_fmt=pix_fmt,
            gop=gop,
            bframes=bframes,
            color=color,
            crf=crf,
        )
        if rotation is not None:
            vs.set_display_rotation(rotation)
        aus = _add_audio(container, audio_channels) if audio else None
        sub = None
        if subtitles is not None:
            # No encoder needed: a codec-less stream and hand-made packets of UTF-8 text
            # (MP4/MOV: mov_text, the text behind a 16-bit big-endian length).
            mp4 = _container_format(path) in ("mp4", "mov")
            sub = container.add_mux_stream("mov_text" if mp4 else "subrip")
            sub.time_base = Fraction(1, 1000)
        _apply_tags(container, {"video": vs, "audio": aus, "subtitle": sub}, tags or {})
        if sub is not None:
            # Subtitle packets first: av_interleaved_write_frame sorts everything by time.
            for start, dur, text in subtitles:
                data = text.encode("utf-8")
                pkt = av.Packet(len(data).to_bytes(2, "big") + data if mp4 else data)
                pkt.stream = sub
                pkt.time_base = Fraction(1, 1000)
                pkt.pts = pkt.dts = int(round(start * 1000))
                pkt.duration = int(round(dur * 1000))
                container.mux(pkt)
        afr = iter(_audio_frames(end_time, audio_channels)) if aus is not None else iter(())
        apos = Fraction(0)
        end_pts = expected_pts([end_time], tb)[0]
        # libx264/libx265 leave packet durations at 0: set them (gap to the next frame).
        durations = {p: q - p for p, q in zip(pts, pts[1:] + [end_pts], strict=True)}
        for i, p in enumerate(pts):
            frame = _make_video_frame(i, width, height, pix_fmt, color)
            frame.pts = p
            frame.time_base = tb
            container.mux(_with_durations(vs.encode(frame), durations))
            # Keep audio roughly interleaved with video.
            while aus is not None and apos <= times[i]:
                af = next(afr, None)
                if af is None:
                    break
                container.mux(aus.encode(af))
                apos = Fraction(af.pts + af.samples, AUDIO_RATE)
        container.mux(_with_durations(vs.encode(None), durations))
        if aus is not None:
            for af in afr:
                container.mux(aus.encode(af))
            container.mux(aus.encode(None))
    return path


def make_clip(
    path,
    *,
    width: int = 96,
    height: int = 64,
    frames: int = 24,
    rate: Fraction | int = Fraction(30),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio: bool = True,
    gop: int = 8,
    bframes: bool = True,
    audio_channels: int = 2,
    color: dict | None = None,
    time_base: Fraction | None = None,
    crf: int = DEFAULT_CRF,
) -> Path:
    """CFR clip: ``frames`` frames at ``rate`` (pts = i/rate exactly, in ``time_base``,
    default ``default_time_base(rate)``), keyframe every ``gop`` frames, 2 B-frames when
    ``bframes``, plus an AAC sine track (48 kHz, ``audio_channels``) covering frames/rate s.
    ``color``: AVColor* tags to set (e.g. ``BT709_TAGS``); also picks the RGB->YUV matrix.
    """
    rate = Fraction(rate)
    return _write(
        path,
        times=cfr_times(frames, rate),
        end_time=Fraction(frames) / rate,
        width=width,
        height=height,
        rate=rate,
        time_base=time_base,
        codec=codec,
        pix_fmt=pix_fmt,
        gop=gop,
        bframes=bframes,
        audio=audio,
        audio_channels=audio_channels,
        color=color,
        crf=crf,
    )


def make_vfr_clip(
    path,
    *,
    width: int = 96,
    height: int = 64,
    times: Sequence[Fraction] | None = None,
    frames: int = 20,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio: bool = True,
    gop: int = 8,
    bframes: bool = True,
    audio_channels: int = 2,
    rate: Fraction | int = Fraction(30),
) -> Path:
    """Variable frame rate clip: frames at ``times`` (s; default ``vfr_times(frames)``:
    gaps alternating 1/30 and 1/15 s plus one 0.5 s gap), time base 1/30000 (exact for
    those times in MP4), nominal (declared) ``rate`` (Matroska's default duration; a
    file whose frames were dropped declares its average rate), AAC audio up to last
    time + 1/30 s. The last frame lasts 1/30 s."""
    times = [Fraction(t) for t in (times if times is not None else vfr_times(frames))]
    return _write(
        path,
        times=times,
        end_time=times[-1] + Fraction(1, 30),
        width=width,
        height=height,
        rate=Fraction(rate),
        time_base=Fraction(1, 30000),
        codec=codec,
        pix_fmt=pix_fmt,
        gop=gop,
        bframes=bframes,
        audio=audio,
        audio_channels=audio_channels,
    )


def make_mkv_with_subtitles(
    path,
    *,
    cues: Sequence[tuple[float, float, str]] = DEFAULT_SUBTITLES,
    width: int = 96,
    height: int = 64,
    frames: int = 24,
    rate: Fraction | int = Fraction(30),
    audio: bool = True,
    audio_channels: int = 2,
) -> Path:
    """Matroska with H.264 video, AAC audio and a SubRip track of ``cues``
    ((start s, duration s, text); packets are the UTF-8 text, times in ms)."""
    path = Path(path)
    if path.suffix.lower() != ".mkv":
        raise ValueError("make_mkv_with_subtitles writes Matroska: use a .mkv path")
    rate = Fraction(rate)
    return _write(
        path,
        times=cfr_times(frames, rate),
        end_time=Fraction(frames) / rate,
        width=width,
        height=height,
        rate=rate,
        time_base=None,
        codec="libx264",
        pix_fmt="yuv420p",
        gop=8,
        bframes=True,
        audio=audio,
        audio_channels=audio_channels,
        subtitles=list(cues),
    )


D = av.stream.Disposition
# A film's commentary track and forced signs subtitles, as the issue-12 report saw them.
DEFAULT_TAGS: dict = {
    "container": {"title": "A tagged film", "comment": "made by the tests"},
    "chapters": ((0.0, 0.2, "Opening"), (0.2, 0.4, "Middle")),
    "video": {"metadata": {"language": "fra", "title": "Main picture"}, "disposition": D.default},
    "audio": {
        "metadata": {"language": "jpn", "title": "Commentary"},
        "disposition": D.default | D.comment,
    },
    "subtitle": {
        "metadata": {"language": "eng", "title": "Signs"},
        "disposition": D.forced | D.hearing_impaired,
    },
}


def make_tagged_clip(
    path,
    *,
    tags: dict | None = None,
    frames: int = 12,
    rate: Fraction | int = Fraction(30),
    subtitles: bool = True,
    cues: Sequence[tuple[float, float, str]] = DEFAULT_SUBTITLES,
) -> Path:
    """CFR clip (H.264, AAC, a subtitle track of ``cues`` unless ``subtitles=False``:
    SubRip in Matroska, mov_text in MP4/MOV) carrying ``tags`` (default ``DEFAULT_TAGS``):
    ``{"container": {key: value}, "chapters": ((start s, end s, title), ...),
    "video" / "audio" / "subtitle": {"metadata": {...}, "disposition": Disposition}}``.
    What reads back is what the container can hold (MOV keeps no comment/forced flags)."""
    rate = Fraction(rate)
    return _write(
        path,
        times=cfr_times(frames, rate),
        end_time=Fraction(frames) / rate,
        width=96,
        height=64,
        rate=rate,
        time_base=None,
        codec="libx264",
        pix_fmt="yuv420p",
        gop=8,
        bframes=True,
        audio=True,
        audio_channels=2,
        subtitles=list(cues) if subtitles else None,
        tags=DEFAULT_TAGS if tags is None else tags,
    )


def png_bytes(width: int = 8, height: int = 6, value: int = 200) -> bytes:
    """A small PNG picture (for cover art)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def with_cover(src, dst, cover: bytes, attachments: Sequence[tuple[str, str, bytes]] = ()):
    """Copy ``src`` to ``dst`` packet for packet, adding PNG cover art ``cover`` (MP4:
    an attached-picture stream, made the first stream so a reader must not take it for
    the video; Matroska: an image attachment) and, for Matroska, ``attachments`` as
    (file name, MIME type, bytes). The way ffmpeg's ``-disposition attached_pic`` and
    ``-attach`` write them."""
    from PIL import Image

    dst = Path(dst)
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        if dst.suffix == ".mkv":
            out.add_attachment("cover.png", "image/png", cover)
            for name, mimetype, data in attachments:
                out.add_attachment(name, mimetype, data)
            pic = None
        else:
            import io

            width, height = Image.open(io.BytesIO(cover)).size
            pic = out.add_mux_stream("png", width=width, height=height)
            pic.time_base = Fraction(1, 90000)
            pic.disposition = av.stream.Disposition.attached_pic
        streams = [s for s in source.streams if s.discard != av.stream.Discard.all]
        copies = {s.index: out.add_stream_from_template(s) for s in streams}  # no chapter track
        for s in streams:
            copies[s.index].metadata.update(s.metadata)
            copies[s.index].disposition = int(s.disposition)
        out.metadata.update(source.metadata)
        if source.chapters():
            out.set_chapters(source.chapters())
        out.start_encoding()
        if pic is not None:
            packet = av.Packet(cover)
            packet.stream = pic
            out.mux(packet)
        for packet in source.demux(*streams):
            if packet.size == 0:  # the demuxer's end-of-stream packets
                continue
            packet.stream = copies[packet.stream_index]
            out.mux(packet)
    return dst


def covers_and_attachments(path) -> tuple[list[bytes], dict[str, tuple[str, bytes]]]:
    """(the cover art pictures' bytes, {attachment name: (MIME type, bytes)}) of a file as
    PyAV reads them (an image attached to a Matroska file reads as cover art)."""
    pictures, attached = [], {}
    with av.open(str(path)) as c:
        for s in c.streams:
            if s.type == "attachment":
                attached[s.name] = (s.mimetype, bytes(s.data))
    with av.open(str(path)) as c:
        for s in c.streams:
            if s.type == "video" and s.disposition & av.stream.Disposition.attached_pic:
                with av.open(str(path)) as again:
                    packet = next(p for p in again.demux(again.streams[s.index]) if p.size)
                    pictures.append(bytes(packet))
    return pictures, attached


def make_rotated_clip(
    path,
    rotation: float = 90,
    *,
    width: int = 96,
    height: int = 64,
    frames: int = 12,
    rate: Fraction | int = Fraction(30),
    audio: bool = True,
) -> Path:
    """MP4/MOV whose video stream carries a display matrix for ``rotation`` degrees
    (counter-clockwise, as ``VideoFrame.rotation`` reads it back)."""
    rate = Fraction(rate)
    return _write(
        path,
        times=cfr_times(frames, rate),
        end_time=Fraction(frames) / rate,
        width=width,
        height=height,
        rate=rate,
        time_base=None,
        codec="libx264",
        pix_fmt="yuv420p",
        gop=8,
        bframes=True,
        audio=audio,
        audio_channels=2,
        rotation=rotation,
    )


def make_10bit_hevc_clip(
    path,
    *,
    width: int = 64,
    height: int = 48,
    frames: int = 12,
    rate: Fraction | int = Fraction(30),
    color: dict | None = None,
    audio: bool = True,
    gop: int = 4,
    bframes: bool = True,
) -> Path:
    """HEVC Main10 (libx265, yuv420p10le) with colour tags (default ``HDR10_TAGS``:
    BT.2020 primaries, PQ transfer, BT.2020nc matrix, limited range)."""
    rate = Fraction(rate)
    return _write(
        path,
        times=cfr_times(frames, rate),
        end_time=Fraction(frames) / rate,
        width=width,
        height=height,
        rate=rate,
        time_base=None,
        codec="libx265",
        pix_fmt="yuv420p10le",
        gop=gop,
        bframes=bframes,
        audio=audio,
        audio_channels=2,
        color=dict(HDR10_TAGS if color is None else color),
    )


# --------------------------------------------------------------------------------------
# Readers for assertions


def _stream_rotation(path: Path, index: int) -> float | None:
    """Rotation of the display matrix, from the first decoded frame (PyAV exposes no
    reader for stream side data; decoders copy it onto every frame)."""
    with av.open(str(path)) as c:
        s = c.streams[index]
        s.thread_type = "SLICE"
        for frame in c.decode(s):
            return float(frame.rotation)
    return None


def probe_summary(path, *, rotation: bool = True) -> dict:
    """Demux ``path`` (no decode, except one frame for ``rotation``) and summarise it.

    Returns ``{"format": str, "duration": float | None (s), "streams": [dict, ...]}``.
    Every stream dict has:

    - ``index``, ``type`` ("video" / "audio" / "subtitle"), ``codec`` (the decoder's
      name: a SubRip track reads back as "srt", the first decoder for that codec id),
      ``time_base`` (Fraction, the container's), ``stream_duration`` (int or None);
    - ``pts``: sorted list of packet pts; ``durations``: packet durations in that order
      (MP4/MOV: decode-order dts gaps, not per-frame display durations);
    - ``packets``, ``keyframes`` (counts), ``reordered`` (file order != pts order, i.e.
      B-frames);
    - ``start`` (lowest pts; AAC priming gives -1024/48000 s), ``end`` (max pts +
      duration), ``packet_duration_s`` ((end - max(start, 0)) * time_base),
      ``duration_s`` (the container's stream duration where it has one (MP4/MOV), else
      ``packet_duration_s``).

    Audio and subtitle streams add ``data`` (``bytes(packet)`` in file order) and
    ``data_pts`` (same order); audio adds ``sample_rate, channels``; video adds
    ``width, height, pix_fmt, color_range, colorspace, color_primaries, color_trc``
    (AVColor* ints), ``average_rate`` and ``rotation`` (float degrees, counter-clockwise,
    normalised by FFmpeg to [-180, 180]: 270 reads back as -90, 180 as -180; None when
    ``rotation=False``).
    """
    path = Path(path)
    out: dict = {"streams": []}
    packets: dict[int, list] = {}
    with av.open(str(path)) as c:
        out["format"] = c.format.name
        out["duration"] = None if c.duration is None else c.duration / 1_000_000
        for s in c.streams:
            info = {
                "index": s.index,
                "type": s.type,
                "codec": s.codec_context.name if s.codec_context is not None else None,
                "time_base": s.time_base,
                "stream_duration": s.duration,
            }
            cc = s.codec_context
            if s.type == "video":
                info.update(
                    width=cc.width,
                    height=cc.height,
                    pix_fmt=cc.pix_fmt,
                    color_range=int(cc.color_range),
                    colorspace=int(cc.colorspace),
                    color_primaries=int(cc.color_primaries),
                    color_trc=int(cc.color_trc),
                    average_rate=s.average_rate,
                )
            elif s.type == "audio":
                info.update(sample_rate=cc.sample_rate, channels=cc.channels)
            out["streams"].append(info)
            packets[s.index] = []
        for pkt in c.demux():
            if pkt.size == 0 and pkt.pts is None:
                continue  # flush packets
            packets[pkt.stream_index].append(
                (pkt.pts, pkt.dts, pkt.duration, pkt.is_keyframe, bytes(pkt))
            )
    for info in out["streams"]:
        pk = packets[info["index"]]
        by_pts = sorted((p for p in pk if p[0] is not None), key=lambda p: p[0])
        info["pts"] = [p[0] for p in by_pts]
        info["durations"] = [p[2] for p in by_pts]
        info["packets"] = len(pk)
        file_pts = [p[0] for p in pk if p[0] is not None]
        info["reordered"] = file_pts != sorted(file_pts)  # B-frames: decode != display
        info["keyframes"] = sum(1 for p in pk if p[3])
        if by_pts:
            info["start"] = by_pts[0][0]
            info["end"] = max(p[0] + (p[2] or 0) for p in by_pts)
            # Negative pts (AAC encoder priming, -1024 samples) are not presented.
            first = max(info["start"], 0)
            info["packet_duration_s"] = float((info["end"] - first) * info["time_base"])
        else:
            info["start"] = info["end"] = None
            info["packet_duration_s"] = 0.0
        if info["stream_duration"]:
            # MP4/MOV: the track's presentation duration (edit list), right for VFR too;
            # its per-packet durations are decode-order dts gaps.
            info["duration_s"] = float(info["stream_duration"] * info["time_base"])
        else:
            info["duration_s"] = info["packet_duration_s"]
        if info["type"] in ("audio", "subtitle"):
            info["data"] = [p[4] for p in pk]
            info["data_pts"] = [p[0] for p in pk]
        if info["type"] == "video":
            info["rotation"] = _stream_rotation(path, info["index"]) if rotation else None
    return out


def video_stream(summary: dict, kind: str = "video") -> dict:
    """The first stream of ``kind`` in a ``probe_summary`` result."""
    return next(s for s in summary["streams"] if s["type"] == kind)


def decode_frames(path, *, format: str = "rgb24", stream: int = 0) -> list[np.ndarray]:
    """All frames of the ``stream``-th video stream, in display order, as HxWxC arrays
    (``rgb24`` -> uint8, ``rgb48le`` -> uint16). YUV->RGB uses the frame's own matrix
    tag when it is BT.709 / BT.2020 (BT.601 otherwise), like the writers."""
    frames = []
    with av.open(str(path)) as c:
        s = c.streams.video[stream]
        for frame in c.decode(s):
            spc = {SPC_BT709: "itu709", SPC_BT2020_NCL: "bt2020"}.get(
                int(frame.colorspace), "itu601"
            )
            rng = "JPEG" if int(frame.color_range) == RANGE_JPEG else "MPEG"
            rgb = frame.reformat(
                format=format, src_colorspace=spc, dst_colorspace="itu601", src_color_range=rng
            )
            frames.append(rgb.to_ndarray())
    return frames
