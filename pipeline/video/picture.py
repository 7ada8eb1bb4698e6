"""What a video's first decoded frames say that its headers may not: the picture's size
and pixel format when the demuxer could not fill them in (a video stream that starts
later than the probe's look-ahead), rotation, sample aspect ratio, whether the frames are
coded interlaced, and the HDR side data (SMPTE ST 2086 mastering display, content light
level, and dynamic metadata that cannot survive an upscale).

FFmpeg's decoders attach both the container's and the bitstream's HDR metadata to the
frames they return, so one reader covers Matroska ``MasteringMetadata``, MP4 ``mdcv`` /
``clli`` and HEVC/AV1 SEI alike. Part of probe (``pipeline/video/probe.py``).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pipeline.errors import UserError

log = logging.getLogger(__name__)

SAMPLE_FRAMES = 8  # how many frames decide "interlaced" (and carry first-frame side data)
# Frame side data that describes a single frame's picture and cannot follow it through
# the model: HDR10+ (SMPTE 2094-40), Dolby Vision RPU, HDR Vivid.
DYNAMIC_HDR = ("DYNAMIC_HDR_PLUS", "DOVI_RPU_BUFFER", "DOVI_METADATA", "DYNAMIC_HDR_VIVID")
DYNAMIC_NAMES = {
    "DYNAMIC_HDR_PLUS": "HDR10+ (SMPTE ST 2094-40)",
    "DOVI_RPU_BUFFER": "Dolby Vision RPU",
    "DOVI_METADATA": "Dolby Vision RPU",
    "DYNAMIC_HDR_VIVID": "HDR Vivid (CUVA 005.1)",
}


@dataclass(frozen=True)
class FirstFrames:
    """What the first decoded frames say (``None``/empty where nothing was decoded)."""

    width: int = 0
    height: int = 0
    pix_fmt: str | None = None
    rotation: int = 0
    sar: tuple[int, int] | None = None  # sample aspect ratio; None: square or unknown
    interlaced: bool = False  # any sampled frame is coded interlaced
    # SMPTE ST 2086, as AVRationals (num, den): R, G, B primaries x/y, white point x/y,
    # then min and max luminance (cd/m2); None where the source has none.
    mastering: tuple[tuple[int, int], ...] | None = None
    cll: tuple[int, int] | None = None  # (MaxCLL, MaxFALL) cd/m2
    dynamic: tuple[str, ...] = ()  # names of dynamic HDR metadata found (DYNAMIC_NAMES)


def parse_mastering(raw: bytes) -> tuple[tuple[int, int], ...] | None:
    """An AVMasteringDisplayMetadata's bytes as ten (num, den) pairs, or None when it has
    neither primaries nor luminance."""
    v = struct.unpack("<22i", raw[:88])
    has_primaries, has_luminance = v[20], v[21]
    if not (has_primaries and has_luminance):
        return None
    return tuple((v[i], v[i + 1]) for i in range(0, 20, 2))


def parse_cll(raw: bytes) -> tuple[int, int]:
    """An AVContentLightMetadata's bytes as (MaxCLL, MaxFALL)."""
    return struct.unpack("<2I", raw[:8])


def _sar(value: Any) -> tuple[int, int] | None:
    if not value or not value.numerator or not value.denominator:
        return None
    q = Fraction(value.numerator, value.denominator)
    return None if q == 1 else (q.numerator, q.denominator)


def read_first_frames(container: Any, stream: Any, count: int = SAMPLE_FRAMES) -> FirstFrames:
    """Decode up to ``count`` frames of ``stream`` from the start and report on them.
    A stream that cannot decode gives an empty report (ingest names the failure)."""
    from av.sidedata.sidedata import Type

    frames = []
    try:
        container.seek(0)
        for frame in container.decode(stream):
            frames.append(frame)
            if len(frames) >= count:
                break
    except Exception:  # a stream that cannot decode is reported by ingest
        pass
    if not frames:
        return FirstFrames()
    first = frames[0]
    mastering = cll = None
    dynamic: list[str] = []
    for frame in frames:
        sd = frame.side_data
        if mastering is None and Type.MASTERING_DISPLAY_METADATA in sd:
            mastering = parse_mastering(bytes(sd[Type.MASTERING_DISPLAY_METADATA]))
        if cll is None and Type.CONTENT_LIGHT_LEVEL in sd:
            cll = parse_cll(bytes(sd[Type.CONTENT_LIGHT_LEVEL]))
        for name in DYNAMIC_HDR:
            kind = DYNAMIC_NAMES[name]
            if getattr(Type, name, None) in sd and kind not in dynamic:
                dynamic.append(kind)
    sar = _sar(stream.sample_aspect_ratio) or _sar(stream.codec_context.sample_aspect_ratio)
    return FirstFrames(
        width=first.width,
        height=first.height,
        pix_fmt=first.format.name,
        rotation=int(round(first.rotation or 0)) % 360,
        sar=sar,
        interlaced=any(f.interlaced_frame for f in frames),
        mastering=mastering,
        cll=cll,
        dynamic=tuple(dynamic),
    )


# Encoders that write the sample aspect ratio into the bitstream (H.264/HEVC VUI).
SAR_IN_BITSTREAM = ("libx264", "libx265")
SAR_CONTAINERS = ("mp4", "mov")  # write it from the codec parameters (``pasp``)


def check_aspect(info: Any, codec: str, fmt: str, drop_unsupported: bool) -> None:
    """Refuse (or, with --drop-unsupported, warn about) an anamorphic source whose output
    would carry its sample aspect ratio nowhere: Matroska's display size comes from the
    muxer's stream, which PyAV cannot set, so there only the H.264/HEVC VUI holds it."""
    if not info.sar or codec in SAR_IN_BITSTREAM or fmt in SAR_CONTAINERS:
        return
    sar = f"{info.sar[0]}:{info.sar[1]}"
    what = f"{info.path} has non-square pixels (sample aspect ratio {sar})"
    if drop_unsupported:
        log.warning("%s; %s in Matroska cannot carry it: written with square pixels", what, codec)
        return
    raise UserError(
        f"{what}, which {codec} in .mkv cannot carry; use .mp4 or .mov, or --codec libx264 "
        "or libx265 (they write it into the video itself), or pass --drop-unsupported"
    )
