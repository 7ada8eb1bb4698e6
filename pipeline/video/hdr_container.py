"""HDR10 static metadata in the container: Matroska ``MasteringMetadata``, MP4 ``mdcv``/``clli``.

FFmpeg's muxers write these from the output stream's coded side data, which PyAV can
neither set nor let an encoder fill. A stream copied from a template keeps all of its
codec parameters, side data included, so the assembly of an HDR10 output takes its video
stream from a template: a header-only Matroska file made here, in memory, that holds the
segments' codec (CodecID and CodecPrivate: the encoder's extradata), the picture size,
the colour tags and the mastering metadata (Matroska stores floats; FFmpeg reads them
back in x265's units, 0.00002 and 0.0001 cd/m2, so x265-unit values come back exact).
The segments' packets are muxed into that stream unchanged (``pipeline/video/assemble.py``).

Only HEVC (libx265) goes this way: PyAV cannot make a stream from an AV1 template, so
SVT-AV1 output carries the metadata in its bitstream only (``pipeline/video/hdr.py``).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

MATROSKA_CODEC_IDS = {"libx265": "V_MPEGH/ISO/HEVC"}


def takes_template(codec: str, info: Any) -> bool:
    """Whether the output's video stream is made from an HDR10 template."""
    return codec in MATROSKA_CODEC_IDS and bool(info.mastering or info.cll)


def _size(n: int) -> bytes:
    """An EBML variable-size integer (the length of an element's payload)."""
    for length in range(1, 9):
        if n < (1 << (7 * length)) - 1:
            return (n | (1 << (7 * length))).to_bytes(length, "big")
    raise ValueError(f"EBML element of {n} bytes is too large")


def _element(element_id: int, payload: bytes) -> bytes:
    return (
        element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")
        + _size(len(payload))
        + payload
    )


def _uint(element_id: int, value: int) -> bytes:
    return _element(
        element_id, int(value).to_bytes(max(1, (int(value).bit_length() + 7) // 8), "big")
    )


def _float(element_id: int, value: Fraction) -> bytes:
    return _element(element_id, struct.pack(">d", float(value)))


def matroska_template(
    codec_id: str,
    extradata: bytes,
    size: tuple[int, int],
    color: dict[str, int],
    mastering: Sequence[Sequence[int]] | None,
    cll: Sequence[int] | None,
) -> bytes:
    """A Matroska file with one video track and no frames: ``size`` is (width, height);
    ``mastering`` as probe reads it (R, G, B, white point x/y, min, max luminance)."""
    colour = b""
    for element_id, key in ((0x55B1, "space"), (0x55BA, "trc"), (0x55BB, "primaries")):
        if color.get(key) not in (None, 2):  # 2: unspecified
            colour += _uint(element_id, color[key])
    if color.get("range"):
        colour += _uint(0x55B9, color["range"])  # 1 limited, 2 full: as AVColorRange
    if cll:
        colour += _uint(0x55BC, cll[0]) + _uint(0x55BD, cll[1])
    if mastering:
        q = [Fraction(n, d) if d else Fraction(0) for n, d in mastering]
        # PrimaryR/G/B x, y (0x55D1-0x55D6), white point x, y, LuminanceMax, LuminanceMin
        values = [*q[:8], q[9], q[8]]
        colour += _element(0x55D0, b"".join(_float(0x55D1 + i, v) for i, v in enumerate(values)))
    video = (
        _uint(0x9A, 2)  # FlagInterlaced: progressive (what the segments are)
        + _uint(0xB0, size[0])
        + _uint(0xBA, size[1])
        + _element(0x55B0, colour)
    )
    track = (
        _uint(0xD7, 1)  # TrackNumber
        + _uint(0x73C5, 1)  # TrackUID
        + _uint(0x83, 1)  # TrackType: video
        + _element(0x86, codec_id.encode())
        + _element(0x63A2, extradata)  # CodecPrivate
        + _element(0xE0, video)
    )
    segment = (
        _element(0x1549A966, _uint(0x2AD7B1, 1_000_000))  # Info: TimestampScale 1 ms
        + _element(0x1654AE6B, _element(0xAE, track))  # Tracks
        + _element(0x1F43B675, _uint(0xE7, 0))  # an empty Cluster: the end of the header
    )
    header = _element(
        0x1A45DFA3,
        _uint(0x4286, 1)
        + _uint(0x42F7, 1)
        + _uint(0x42F2, 4)
        + _uint(0x42F3, 8)
        + _element(0x4282, b"matroska")
        + _uint(0x4287, 4)
        + _uint(0x4285, 2),
    )
    return header + _element(0x18538067, segment)


def template_stream(codec: str, info: Any, extradata: bytes, size: tuple[int, int]) -> Any:
    """The template's video stream (its container stays open while the stream is used)."""
    import av

    blob = matroska_template(
        MATROSKA_CODEC_IDS[codec], extradata, size, info.color, info.mastering, info.cll
    )
    return av.open(io.BytesIO(blob)).streams.video[0]


def hdr_video_stream(
    container: Any, info: Any, codec: str, size: tuple[int, int], extradata: bytes
) -> Any:
    """The output's video stream for HDR10 segments of ``codec``: the template's codec
    parameters with the mastering metadata, and what ``segments.video_stream`` gives
    every output (tags, disposition, timecode, time base, sample aspect ratio)."""
    from pipeline.video.container import output_rate, source_stream
    from pipeline.video.encode import output_timecode, set_timecode
    from pipeline.video.streams import copy_stream_meta

    vs = container.add_stream_from_template(template_stream(codec, info, extradata, size))
    copy_stream_meta(source_stream(info, info.video_index), vs, container.format.name)
    set_timecode(vs.metadata, output_timecode(info))
    vs.time_base = info.tb
    rate = output_rate(info)
    if rate:
        vs.codec_context.framerate = rate
    if info.sar:
        vs.codec_context.sample_aspect_ratio = Fraction(*info.sar)
    return vs
