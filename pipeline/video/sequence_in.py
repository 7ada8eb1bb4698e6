"""Frame sequences in: a numbered DPX/EXR/TIFF/PNG sequence read as a video without audio.

Studios hand over shots as one file per frame (``shot/frame.%06d.dpx``, numbered from
1001 by VFX convention). Such a sequence becomes a ``SequenceInfo`` — a ``VideoInfo``
whose frames are files — so it runs through the video machinery unchanged (segments,
bounded scratch, resume, progress, parallel decode); only the decode task differs:
``ingest_sequence_task`` decodes each frame's file with FFmpeg's own image decoder
(PyAV codec context) instead of demuxing a container. Every frame is a keyframe, so
segments cut anywhere. Timing comes from ``--fps`` (a sequence has none of its own):
frame ``i`` of the selection is shown at ``i / fps``.

A gap in the numbering is refused (a missing frame would silently shorten the shot and
shift every later frame); so are frames of another size and alpha channels (the video
path carries RGB).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.video.frameheaders import read_timecode
from pipeline.video.probe import VideoInfo, parse_range
from pipeline.video.tasks import Segment, VideoJob

# FFmpeg's image2 pipe demuxers (detected from the content) -> the decoder we use.
CODECS = {"dpx_pipe": "dpx", "exr_pipe": "exr", "tiff_pipe": "tiff", "png_pipe": "png"}
PRINTF = re.compile(r"%(0?\d*)d")
NUMBERED = re.compile(r"^(?P<head>.*?)(?P<num>\d+)(?P<tail>\.[A-Za-z0-9]+)$")
MAX_LISTED = 8  # missing ranges named in a gap error
FLOAT_FORMATS = ("gbrpf16le", "gbrpf32le", "grayf16le", "grayf32le")  # float_planes reads


@dataclass(frozen=True)
class SequenceInfo(VideoInfo):
    """A frame sequence as a video: ``numbers`` are every file number (sorted, no gaps),
    the selection is ``numbers[first : first + frames]``; ``pattern`` is printf-style."""

    pattern: str = ""
    numbers: tuple[int, ...] = ()
    float_bits: int = 0  # 16 (half) or 32 (float) for EXR samples; 0: integer samples
    timecode: str | None = None  # the first file's header timecode (DPX/EXR), if any

    @property
    def dtype(self) -> str:
        if self.float_bits:
            return "float32"
        return super().dtype

    def number(self, index: int) -> int:
        """The file number of selected frame ``index``."""
        return self.numbers[self.first + index]

    def frame_path(self, index: int) -> str:
        return self.pattern % self.number(index)


def is_pattern(name: str) -> bool:
    """Whether a file name holds exactly one printf frame number (``%06d``, ``%d``)."""
    return len(PRINTF.findall(name.replace("%%", ""))) == 1


def is_sequence_input(path: str) -> bool:
    """A local printf-style pattern, or a local folder that is not a Zarr store."""
    if "://" in path:
        return False
    p = Path(path)
    if is_pattern(p.name):
        return True
    return p.is_dir() and not any((p / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))


def parse_rate(text: str | int | float) -> Fraction:
    """``24``, ``23.976``, ``24000/1001`` -> a positive Fraction (UserError otherwise)."""
    try:
        rate = Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        rate = Fraction(0)
    if rate <= 0:
        raise UserError(f"--fps expects a positive frame rate like 24 or 24000/1001, got {text!r}")
    return rate.limit_denominator(1001000)


def _pattern_regex(name: str) -> tuple[re.Pattern[str], int]:
    """A regex for the file names a printf pattern gives, and its zero-padded width."""
    m = PRINTF.search(name)
    assert m is not None
    spec = m.group(1)
    width = int(spec) if spec else 0
    # As printf writes them: %04d pads to 4 digits (longer numbers are not padded), %d
    # never pads, so "0001" is not frame 1 of "f.%d.dpx".
    if spec.startswith("0") and width:
        digits = rf"\d{{{width}}}|[1-9]\d{{{width},}}"
    else:
        digits = r"0|[1-9]\d*"
    head, tail = name[: m.start()].replace("%%", "%"), name[m.end() :].replace("%%", "%")
    return re.compile(f"^{re.escape(head)}({digits}){re.escape(tail)}$"), width


def find_frames(path: str) -> tuple[str, list[int]]:
    """(printf pattern, sorted file numbers) of a pattern or a folder of numbered frames."""
    p = Path(path)
    if p.is_dir():
        groups: dict[tuple[str, str, int], list[int]] = {}
        for child in p.iterdir():
            m = NUMBERED.match(child.name)
            if m and child.is_file() and not child.name.startswith("."):
                num = m.group("num")
                width = len(num) if num.startswith("0") or len(num) > 1 else 1
                key = (m.group("head"), m.group("tail"), width)
                groups.setdefault(key, []).append(int(num))
        if not groups:
            raise UserError(
                f"{p} is a folder without numbered frames (name.0001.dpx, ...) and not a "
                "Zarr store; give a file, a Zarr store or a frame sequence"
            )
        merged: dict[tuple[str, str], list[tuple[int, list[int]]]] = {}
        for (head, tail, width), nums in groups.items():
            merged.setdefault((head, tail), []).append((width, nums))
        if len(merged) > 1:
            names = ", ".join(f"{h}%0Nd{t}" for h, t in sorted(merged)[:4])
            raise UserError(
                f"{p} holds more than one numbered sequence ({names}); give one as a "
                "pattern, e.g. folder/name.%06d.dpx"
            )
        (head, tail), parts = next(iter(merged.items()))
        widths = {w for w, _ in parts}
        nums = sorted(n for _, ns in parts for n in ns)
        width = widths.pop() if len(widths) == 1 else 0
        spec = f"%0{width}d" if width > 1 else "%d"
        return str(p / f"{head}{spec}{tail}").replace("%%", "%"), nums
    folder = p.parent
    if not folder.is_dir():
        raise UserError(f"input {p}: folder {folder} does not exist")
    regex, _ = _pattern_regex(p.name)
    nums = sorted(int(m.group(1)) for child in folder.iterdir() if (m := regex.match(child.name)))
    if not nums:
        raise UserError(f"input {p}: no file in {folder} matches this frame pattern")
    return str(p), nums


def missing_numbers(numbers: list[int]) -> list[tuple[int, int]]:
    """Inclusive [a, b] ranges of numbers absent between the first and the last."""
    gaps = []
    for prev, cur in zip(numbers, numbers[1:], strict=False):
        if cur - prev > 1:
            gaps.append((prev + 1, cur - 1))
    return gaps


def check_gaps(pattern: str, numbers: list[int]) -> None:
    gaps = missing_numbers(numbers)
    if not gaps:
        return
    count = sum(b - a + 1 for a, b in gaps)
    named = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in gaps[:MAX_LISTED])
    more = f" and {len(gaps) - MAX_LISTED} more gap(s)" if len(gaps) > MAX_LISTED else ""
    raise UserError(
        f"{pattern} has a gap: frame(s) {named}{more} are missing ({count} of "
        f"{numbers[-1] - numbers[0] + 1} between {numbers[0]} and {numbers[-1]}); render or "
        "copy them, or give a range that has none (--frames)"
    )


def _probe_file(path: str) -> tuple[str, Any]:
    """(decoder name, first decoded frame) of one frame file, detected from its content."""
    import av

    try:
        with av.open(path) as container:
            name = container.format.name
            if name not in CODECS:
                raise UserError(
                    f"{path} is {name.removesuffix('_pipe').upper()}: frame sequences of "
                    "DPX, OpenEXR, TIFF or PNG are supported"
                )
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, StopIteration) as exc:
        raise UserError(f"{path} is not a readable frame ({exc})") from None
    return CODECS[name], frame


def probe_sequence(
    path: str,
    fps: str,
    frames: str | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
) -> SequenceInfo:
    """Find the sequence's files and numbers, refuse gaps, read the first frame's format."""
    pattern, numbers = find_frames(path)
    check_gaps(pattern, numbers)
    rate = parse_rate(fps)
    tb = 1 / rate
    first_file = pattern % numbers[0]
    codec, frame = _probe_file(first_file)
    fmt = frame.format
    if len(fmt.components) in (2, 4):
        raise UserError(
            f"{first_file} has an alpha channel ({fmt.name}); a sequence is upscaled as RGB "
            "video: write the frames without alpha"
        )
    bits = max(c.bits for c in fmt.components)
    float_bits = bits if "f16" in fmt.name or "f32" in fmt.name else 0
    if float_bits and fmt.name not in FLOAT_FORMATS:
        raise UserError(
            f"{first_file} holds {fmt.name} float samples; float frames are read from "
            "OpenEXR (planar RGB or gray): convert the sequence to EXR"
        )
    all_pts = list(range(len(numbers)))
    timecode = read_timecode(first_file, codec)
    a, b = parse_range(frames, start_s, end_s, all_pts, tb)
    stream = {
        "index": 0,
        "type": "video",
        "codec": codec,
        "time_base": [tb.numerator, tb.denominator],
        "language": None,
        "title": None,
        "metadata": {},
        "disposition": 0,
    }
    return SequenceInfo(
        path=pattern,
        kind="sequence",
        container="image2",
        width=frame.width,
        height=frame.height,
        frames=b - a,
        first=a,
        pts=tuple(all_pts[a:b]),
        keyframes=tuple(all_pts),
        time_base=(tb.numerator, tb.denominator),
        avg_rate=(rate.numerator, rate.denominator),
        video_index=0,
        codec=codec,
        pix_fmt=fmt.name,
        bit_depth=bits,
        # RGB files: the matrix only matters for a video output, which is tagged with it.
        color={"range": 1, "primaries": 2, "trc": 2, "space": 1},
        rotation=0,
        streams=(stream,),
        end_pts=all_pts[b] if b < len(all_pts) else None,
        base_rate=(rate.numerator, rate.denominator),
        last_duration=1,
        pattern=pattern,
        numbers=tuple(numbers),
        float_bits=float_bits,
        timecode=timecode,
        # The source's start, as a video's tag holds it: a .mov output gets a timecode
        # track from it (a range's start is moved by the output side, as for a video).
        metadata={"timecode": timecode} if timecode else {},
    )


def sequence_identity(info: SequenceInfo) -> dict[str, Any]:
    """What makes a sequence the same input on resume: its pattern and numbers, and the
    first and last files' identity (size, mtime, header hash)."""
    from pipeline.image.probe import identity

    ends = [identity(Path(info.pattern % n)) for n in (info.numbers[0], info.numbers[-1])]
    return {
        "pattern": str(Path(info.pattern).resolve()),
        "numbers": [info.numbers[0], info.numbers[-1]],
        "first": ends[0],
        "last": ends[1],
    }


def float_planes(frame: Any) -> np.ndarray:
    """A planar float frame (EXR: gbrpf16le/gbrpf32le, grayf16le/grayf32le) -> (H, W, 3)
    float32 RGB, read from its planes as they are: swscale's conversion from half floats
    clips to 0..1, which would lose every scene-linear value above 1."""
    kind = "<f2" if "f16" in frame.format.name else "<f4"
    size = np.dtype(kind).itemsize
    planes = [
        np.frombuffer(memoryview(p), dtype=kind)
        .reshape(frame.height, p.line_size // size)[:, : frame.width]
        .astype(np.float32)
        for p in frame.planes
    ]
    if len(planes) == 1:
        planes *= 3
    g, b, r = planes[:3]  # FFmpeg's planar RGB order: G, B, R
    return np.stack([r, g, b], axis=-1)


def decoded_array(frame: Any, dtype: str) -> np.ndarray:
    """A decoded frame -> (H, W, 3) RGB: uint8, uint16 (full 16-bit scale) or float32."""
    if dtype == "float32":
        return float_planes(frame)
    return frame.to_ndarray(format="rgb48le" if dtype == "uint16" else "rgb24")


def decode_file(path: str, codec: str, dtype: str) -> np.ndarray:
    """One frame file -> (H, W, 3) array of ``dtype``, decoded by FFmpeg's ``codec``."""
    import av

    with open(path, "rb") as fh:
        data = fh.read()
    cc = av.CodecContext.create(codec, "r")
    frames = list(cc.decode(av.Packet(data))) + list(cc.decode(None))
    if not frames:
        raise RuntimeError(f"{path} did not decode as {codec.upper()}")
    return decoded_array(frames[0], dtype)


def decode_sequence_segment(task: Segment, job: VideoJob) -> int:
    """Decode the segment's frames [start, end) (one file each) into ``input``."""
    from pipeline.store.jobstore import JobStore

    info, start, end = job.info, task.start, task.end
    store = JobStore.open(job.store_url)
    target = store.array("input")
    for i in range(start, end):
        path = info.frame_path(i)
        try:
            pixels = decode_file(path, info.codec, info.dtype)
        except FileNotFoundError:
            raise RuntimeError(f"frame file {path} disappeared after the probe") from None
        if pixels.shape[:2] != (info.height, info.width):
            raise RuntimeError(
                f"frame file {path} is {pixels.shape[1]}x{pixels.shape[0]}, the sequence "
                f"{info.width}x{info.height}"
            )
        target[i] = pixels
    return end - start
