"""Frame sequences out: ``-o out/frame.%06d.exr`` writes one DPX/EXR/TIFF/PNG file per frame.

The sequence writer takes the place of the segment encoder in the video graph: when a
segment's frames are upscaled, one task writes its files (FFmpeg's image encoders via a
PyAV codec context), each under a hidden temporary name then renamed, so a file that
exists under its final name is complete and a resume skips it. Numbering follows the
source sequence's frame numbers (a VFX shot stays at 1001...), or starts at
``--start-number`` (default 0) for a video source. Samples keep their depth and
float-ness: DPX 8/10/12/16-bit, TIFF and PNG 8/16-bit, EXR half or float; a float source
goes only to EXR. A source timecode goes into DPX/EXR headers, moved on frame by frame.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.formats import SEQUENCE_CODECS
from pipeline.video.frameheaders import timecode_add, with_timecode
from pipeline.video.probe import VideoInfo
from pipeline.video.sequence_in import SequenceInfo, is_pattern
from pipeline.video.tasks import Assemble, Assembled, Encoded, Segment, VideoJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequenceTarget:
    """Where and how each output frame is written: ``pattern % numbers[i]``."""

    pattern: str
    codec: str
    pix_fmt: str  # the encoder's input format
    numbers: tuple[int, ...]  # file number of each selected frame
    exr_half: bool = False
    timecode: str | None = None  # of selected frame 0
    rate: tuple[int, int] = (24, 1)

    def path(self, index: int) -> str:
        return self.pattern % self.numbers[index]


def is_sequence_output(path: str) -> bool:
    p = Path(path)
    return is_pattern(p.name) and p.suffix.lower() in SEQUENCE_CODECS and "://" not in path


def _pix_fmt(codec: str, bits: int, floating: bool, src: str) -> tuple[str, bool]:
    """(encoder pixel format, EXR half) keeping the source's depth and float-ness."""
    if codec == "exr":
        return "gbrpf32le", not floating or bits <= 16
    if floating:
        raise UserError(
            f"{src} has float samples (OpenEXR); only an EXR sequence keeps them: write "
            "out/name.%06d.exr"
        )
    if bits <= 8:
        return "rgb24", False
    if codec == "dpx":
        return {10: "gbrp10le", 12: "gbrp12le"}.get(bits, "rgb48le"), False
    return ("rgb48le" if codec == "tiff" else "rgb48be"), False


def source_timecode(info: VideoInfo) -> str | None:
    """The start timecode of the source: a sequence's header, else a video's tags."""
    if isinstance(info, SequenceInfo):
        return info.timecode
    tc = getattr(info, "timecode", None)
    if tc:
        return str(tc)
    for entry in info.streams:
        if entry["index"] == info.video_index and (entry.get("metadata") or {}).get("timecode"):
            return entry["metadata"]["timecode"]
    return info.metadata.get("timecode") or next(
        (
            (e.get("metadata") or {}).get("timecode")
            for e in info.streams
            if (e.get("metadata") or {}).get("timecode")
        ),
        None,
    )


def check_other_streams(info: VideoInfo, drop_unsupported: bool) -> None:
    """A sequence holds pictures only: a video's audio, subtitle and data streams are
    refused, or left out with ``--drop-unsupported`` (one warning line)."""
    others = [
        f"#{e['index']} ({e['type']})"
        for e in info.streams
        if e["index"] != info.video_index and e["type"] in ("audio", "subtitle")
    ]
    if not others:
        return
    what = f"stream(s) {', '.join(others)} of {info.path}"
    if drop_unsupported:
        log.warning("dropping %s: a frame sequence holds pictures only", what)
        return
    raise UserError(
        f"{what} cannot be stored in a frame sequence; write a video file, or pass "
        "--drop-unsupported to leave them out"
    )


def plan_sequence_output(
    info: VideoInfo,
    out: str,
    start_number: int | None,
    overwrite: bool,
    resuming: bool,
    drop_unsupported: bool = False,
) -> SequenceTarget:
    """Decide the output files and their format; refuse what cannot be kept."""
    check_other_streams(info, drop_unsupported)
    codec = SEQUENCE_CODECS[Path(out).suffix.lower()]
    floating = isinstance(info, SequenceInfo) and bool(info.float_bits)
    pix_fmt, half = _pix_fmt(codec, info.bit_depth, floating, info.path)
    if isinstance(info, SequenceInfo) and start_number is None:
        numbers = tuple(info.number(i) for i in range(info.frames))
    else:
        base = start_number or 0
        numbers = tuple(range(base, base + info.frames))
    if numbers[0] < 0:
        raise UserError(f"--start-number must be >= 0, got {numbers[0]}")
    if not Path(out).parent.is_dir():
        raise UserError(f"output directory {Path(out).parent} does not exist; create it first")
    rate = Fraction(*info.avg_rate) if info.avg_rate else Fraction(24)
    tc = source_timecode(info)
    if tc and info.first:  # a range starts later in the shot
        tc = timecode_add(tc, info.first, rate)
    target = SequenceTarget(
        out, codec, pix_fmt, numbers, half, tc, (rate.numerator, rate.denominator)
    )
    existing = [p for p in (target.path(i) for i in range(len(numbers))) if os.path.exists(p)]
    if existing and not overwrite and not resuming:
        raise UserError(
            f"{existing[0]} already exists ({len(existing)} of the {len(numbers)} output "
            "frames do); pass --overwrite to replace them"
        )
    if codec == "exr" and not floating:
        log.info("output: %s-bit samples written to EXR as half floats, 0..1", info.bit_depth)
    return target


def _encoder(target: SequenceTarget, width: int, height: int) -> Any:
    import av

    cc = av.CodecContext.create(target.codec, "w")
    cc.width, cc.height, cc.pix_fmt = width, height, target.pix_fmt
    cc.time_base = Fraction(target.rate[1], target.rate[0])
    if target.codec == "exr":
        cc.options = {"format": "half" if target.exr_half else "float", "compression": "zip16"}
    return cc


def frame_bytes(cc: Any, pixels: np.ndarray, target: SequenceTarget) -> bytes:
    """(H, W, 3) uint8/uint16/float32 samples -> one encoded file's bytes."""
    import av

    if pixels.dtype == np.float32:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="gbrpf32le")
    elif target.codec == "exr":  # integer samples -> 0..1 floats
        unit = pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
        frame = av.VideoFrame.from_ndarray(unit, format="gbrpf32le")
    else:
        fmt = "rgb48le" if pixels.dtype == np.uint16 else "rgb24"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format=fmt)
        if fmt != target.pix_fmt:
            frame = frame.reformat(format=target.pix_fmt)
    packets = list(cc.encode(frame))
    if not packets:
        raise RuntimeError(f"the {target.codec} encoder gave no file for a frame")
    return b"".join(bytes(p) for p in packets)


def temp_path(final: str) -> str:
    p = Path(final)
    return str(p.with_name(f".{p.name}.partial-{os.getpid()}"))


def write_frames(task: Segment, job: VideoJob) -> Encoded:
    """Write the segment's output frames [start, end) as files; skip complete ones on a
    resume (``task.skip_existing``)."""
    from pipeline.runner.placement import current_node
    from pipeline.store.jobstore import JobStore

    target, unit, start, end = job.sequence, task.index, task.start, task.end
    skip_existing = task.skip_existing
    store = JobStore.open(job.store_url)
    frames = store.array("output")
    lay = store.layout
    cc = _encoder(target, lay.width * lay.scale, lay.height * lay.scale)
    rate = Fraction(*target.rate)
    written = 0
    for i in range(start, end):
        final = target.path(i)
        if skip_existing and os.path.exists(final):
            continue
        data = frame_bytes(cc, np.asarray(frames[i]), target)
        if target.timecode:
            data = with_timecode(data, target.codec, timecode_add(target.timecode, i, rate), rate)
        tmp = temp_path(final)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        written += 1
    return Encoded(unit, end - start, current_node(), written=written)


def check_frames(task: Assemble, job: VideoJob) -> Assembled:
    """The sequence is complete: every file is there (the last step of the graph)."""
    target, units = job.sequence, task.segments
    paths = [target.path(i) for i in range(len(target.numbers))]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise RuntimeError(f"{len(missing)} output frame file(s) are missing, first {missing[0]}")
    return Assembled(len(paths), units)


def sweep_temporaries(target: SequenceTarget) -> None:
    """Remove hidden temporaries left by killed runs (their pid no longer exists)."""
    import psutil

    folder = Path(target.pattern).parent
    for path in folder.glob(".*.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not psutil.pid_exists(int(pid)):
            path.unlink(missing_ok=True)
