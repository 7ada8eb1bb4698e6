"""Small remastering sources made the way real ones are, with the FFmpeg binary that
imageio-ffmpeg ships (``tests/video_fixtures.py`` is the PyAV-written set).

Each generator writes one clip and returns its ``Path``: an anamorphic (non-square
pixel) clip, an interlaced one with real motion (two progressive 50 fps frames woven
into each 25i frame, coded interlaced by libx264, top field first), an HDR10 one (x265
10-bit BT.2020/PQ with SMPTE ST 2086 mastering display and MaxCLL/MaxFALL), a MOV with a
timecode track, and a Matroska cut whose video starts later than its audio. Readers of
what comes back: ``ffmpeg_info`` (the stream lines of ``ffmpeg -i``), ``hdr10_of``
(decoded frame side data), ``comb_score`` (how much a frame combs).
"""

from __future__ import annotations

import re
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FFMPEG: str | None
try:
    import imageio_ffmpeg

    FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
except (ImportError, RuntimeError):  # pragma: no cover - the [test] extra has it
    FFMPEG = None

# SMPTE ST 2086 in x265's units: chromaticities in 0.00002, luminance in 0.0001 cd/m2
# (Display P3 primaries, D65, 1000 / 0.0001 cd/m2), as HDR10 masters carry them.
MASTER_DISPLAY = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
MAX_CLL = (1000, 400)


def ffmpeg(*args: str) -> None:
    """Run the FFmpeg binary; raise with its message when it fails."""
    assert FFMPEG, "no ffmpeg binary (pip install imageio-ffmpeg)"
    res = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-y", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {res.stderr.strip()}")


def _source(size: str, rate: str, frames: int) -> list[str]:
    """FFmpeg's moving test pattern (testsrc2: scrolling colours and a moving clock)."""
    duration = Fraction(frames) / Fraction(rate)
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={float(duration)}"]


def make_anamorphic(path: Path, size: str = "72x48", sar: str = "32/27", frames: int = 8) -> Path:
    """A DVD-like clip with non-square pixels (SAR 32:27: 16:9 on a 3:2 frame)."""
    ffmpeg(
        *_source(size, "25", frames),
        "-vf",
        f"setsar={sar}",
        "-c:v",
        "libx264",
        "-g",
        "4",
        "-pix_fmt",
        "yuv420p",
        str(path),
    )
    return path


def make_interlaced(path: Path, size: str = "96x64", frames: int = 12) -> Path:
    """25i, top field first, coded interlaced (x264 ``+ildct+ilme``): each frame weaves
    two consecutive 50 fps pictures of moving content, so every frame combs."""
    ffmpeg(
        *_source(size, "50", 2 * frames),
        "-vf",
        "scroll=horizontal=0.05:vertical=0.03,tinterlace=interleave_top,setfield=tff",
        "-c:v",
        "libx264",
        "-flags",
        "+ildct+ilme",
        "-x264-params",
        "tff=1",
        "-g",
        "6",
        "-pix_fmt",
        "yuv420p",
        "-crf",
        "10",
        str(path),
    )
    return path


def make_soft_telecine(path: Path, frames: int = 12) -> Path:
    """Film with soft pulldown: 23.976 fps progressive frames whose picture timing says
    to repeat fields (x264 ``pulldown=32``), shown at 29.97i by a TV."""
    ffmpeg(
        *_source("64x48", "24000/1001", frames),
        "-c:v",
        "libx264",
        "-x264-params",
        "pulldown=32",
        "-pix_fmt",
        "yuv420p",
        str(path),
    )
    return path


def make_hdr10(path: Path, size: str = "64x48", frames: int = 8) -> Path:
    """An HDR10 master: x265 Main 10, BT.2020 / PQ, mastering display and MaxCLL/MaxFALL
    in the bitstream (SEI)."""
    ffmpeg(
        *_source(size, "25", frames),
        "-vf",
        "format=yuv420p10le,setparams=color_primaries=bt2020:color_trc=smpte2084:"
        "colorspace=bt2020nc:range=tv",
        "-c:v",
        "libx265",
        "-x265-params",
        f"log-level=error:keyint=4:hdr10=1:master-display={MASTER_DISPLAY}:"
        f"max-cll={MAX_CLL[0]},{MAX_CLL[1]}",
        str(path),
    )
    return path


def make_timecoded_mov(path: Path, timecode: str = "01:00:00:00", frames: int = 30) -> Path:
    """A camera/NLE-style MOV: video, AAC audio and a ``tmcd`` timecode track (stream #2,
    data), 25 fps."""
    ffmpeg(
        *_source("64x48", "25", frames),
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:sample_rate=48000:duration={frames / 25}",
        "-c:v",
        "libx264",
        "-g",
        "10",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-timecode",
        timecode,
        str(path),
    )
    return path


def make_late_video_mkv(path: Path, tmp: Path, delay_s: float = 10.0, frames: int = 10) -> Path:
    """A stream-copied Matroska cut whose video starts ``delay_s`` after its audio."""
    video, audio = tmp / "late_v.mkv", tmp / "late_a.mka"
    ffmpeg(*_source("64x48", "25", frames), "-c:v", "libx264", "-g", "5", str(video))
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:sample_rate=48000:duration={delay_s + frames / 25}",
        "-c:a",
        "libopus" if _has_encoder("libopus") else "aac",
        str(audio),
    )
    ffmpeg(
        "-itsoffset",
        str(delay_s),
        "-i",
        str(video),
        "-i",
        str(audio),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c",
        "copy",
        str(path),
    )
    return path


def _has_encoder(name: str) -> bool:
    try:
        av.Codec(name, "w")
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------------------
# Readers


def ffmpeg_info(path: Path) -> str:
    """What ``ffmpeg -i`` prints about ``path`` (streams, SAR/DAR, side data, tags)."""
    assert FFMPEG
    res = subprocess.run(
        [FFMPEG, "-nostdin", "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return res.stderr


def ffmpeg_errors(path: Path) -> str:
    """What FFmpeg says when it decodes every frame of ``path`` with -xerror (empty: clean)."""
    assert FFMPEG
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return (res.stderr + ("" if res.returncode == 0 else f"exit {res.returncode}")).strip()


def video_line(path: Path) -> str:
    """The first video stream line of ``ffmpeg -i``."""
    return next(ln for ln in ffmpeg_info(path).splitlines() if re.search(r"Stream #.*Video:", ln))


def hdr10_of(path: Path) -> dict:
    """Mastering display (AVRationals as Fractions) and content light level of the first
    decoded frame that carries them, from FFmpeg's frame side data."""
    T = av.sidedata.sidedata.Type
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            sd = frame.side_data
            out = {}
            if T.MASTERING_DISPLAY_METADATA in sd:
                v = struct.unpack("<22i", bytes(sd[T.MASTERING_DISPLAY_METADATA])[:88])
                q = [Fraction(v[i], v[i + 1]) if v[i + 1] else None for i in range(0, 20, 2)]
                out["mastering"] = (q, v[20], v[21])
            if T.CONTENT_LIGHT_LEVEL in sd:
                out["cll"] = struct.unpack("<2I", bytes(sd[T.CONTENT_LIGHT_LEVEL])[:8])
            return out
    return {}


def comb_score(y: np.ndarray) -> float:
    """How much a luma plane combs: the mean of the part of each line's difference from
    the average of its neighbours above and below that the lines two apart do not
    explain (zero for smooth pictures, large where fields from different times alternate)."""
    y = y.astype(np.float64)
    mid = y[1:-1] - (y[:-2] + y[2:]) / 2
    far = y[2:-2] - (y[:-4] + y[4:]) / 2
    return float(np.mean(np.maximum(np.abs(mid[1:-1]) - np.abs(far), 0)))


def bwdif_whole(path: Path, width: int, height: int, mode: str = "send_frame") -> list[np.ndarray]:
    """FFmpeg's bwdif over the whole clip, as the ``ffmpeg`` binary runs it: one
    (H * 3 / 2, W) yuv420p array per output frame."""
    assert FFMPEG
    deint = "interlaced" if mode == "send_frame" else "all"
    res = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-vf",
         f"bwdif=mode={mode}:parity=auto:deint={deint}", "-f", "rawvideo", "-pix_fmt",
         "yuv420p", "-fps_mode", "passthrough", "-"],
        capture_output=True,
        timeout=120,
        check=True,
    )  # fmt: skip
    size = width * height * 3 // 2
    raw = np.frombuffer(res.stdout, np.uint8)
    return [raw[i : i + size].reshape(height * 3 // 2, width) for i in range(0, raw.size, size)]


def raw_bitstream_sar(path: Path, codec: str) -> str:
    """The SAR the video bitstream itself declares (H.264/HEVC VUI), read by FFmpeg from
    the elementary stream copied out of the container (no container SAR left)."""
    assert FFMPEG
    fmt = {"h264": "h264", "hevc": "hevc"}[codec]
    out = path.with_suffix(f".{fmt}")
    ffmpeg("-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", fmt, str(out))
    m = re.search(r"SAR (\d+:\d+)", video_line(out))
    return m.group(1) if m else "none"
