"""Measure an upscale against its source: the meters run over a pair of files.

Every figure is measured on the output and, the same way, on the bicubic upscale of the
source, and reported relative to it (1.0 = as good as bicubic). ``metrics`` holds the pure
functions, ``meters`` the per-frame accumulators, ``media`` the file reading, ``report``
the table, JSON and plots; ``measure`` here runs them over a pair of files.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.qc import media, metrics
from pipeline.qc.meters import FidelityMeter, FlickerMeter, SeamMeter


@dataclass(frozen=True)
class QcOptions:
    tile_px: int = 512  # LR px, the job's tile (pipeline.models defaults per model)
    overlap_px: int = 16  # LR px
    max_frames: int | None = None  # stop after this many frames (None: all)
    # Seams sit at fixed positions, so a sample of frames measures them as well as all
    # of them; every 5th frame (from frame 0) saves a third of the per-frame work.
    seam_every: int = 5  # counted in measured frames
    # Measure the frame pairs (k*stride - 1, k*stride) only; the other frames are decoded
    # but not converted or measured. 1: every pair. For a long film, where decoding
    # both files is the floor.
    stride: int = 1


def detect_scale(src_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """The integer upscale factor from the two sizes, or a one-line error."""
    (sh, sw), (oh, ow) = src_hw, out_hw
    if sh <= 0 or sw <= 0 or oh % sh or ow % sw or oh // sh != ow // sw or oh < sh:
        raise UserError(
            f"output {ow}x{oh} is not an integer upscale of source {sw}x{sh} "
            "(same aspect, whole factor); compare a source with its own upscale"
        )
    return oh // sh


def _check_grid(opts: QcOptions) -> None:
    for name, value in (("--seam-every", opts.seam_every), ("--stride", opts.stride)):
        if value < 1:
            raise UserError(f"{name} {value}: need a whole number >= 1")
    if opts.tile_px < 1 or not 0 <= opts.overlap_px < opts.tile_px:
        raise UserError(
            f"--tile {opts.tile_px} --overlap {opts.overlap_px}: need tile >= 1 and "
            "0 <= overlap < tile (LR px)"
        )


def _paired(a: Iterator, b: Iterator, tail: dict) -> Iterator[tuple]:
    """Items of ``a`` and ``b`` side by side up to the shorter; at the end ``tail`` says
    which one had frames left (``longer``: "source", "output" or None)."""
    while True:
        x, y = next(a, None), next(b, None)
        if x is None or y is None:
            tail["longer"] = "source" if x is not None else "output" if y is not None else None
            return
        yield x, y


def _open(source: Path, output: Path, tail: dict, wanted):
    """(kind, source HxW, output HxW, scale, iterator of ((t, src), (t, out)) pairs)."""
    if media.is_image(source) != media.is_image(output):
        raise UserError(f"{source} and {output}: one is an image, the other a video")
    if media.is_image(source):
        src, out = media.read_image(source), media.read_image(output)
        scale = detect_scale(src.shape[:2], out.shape[:2])
        return "image", src.shape[:2], out.shape[:2], scale, iter([((0.0, src), (0.0, out))])
    src_hw, out_hw = media.video_size(source), media.video_size(output)
    scale = detect_scale(src_hw, out_hw)
    pairs = _paired(media.iter_video(source, wanted), media.iter_video(output, wanted), tail)
    return "video", src_hw, out_hw, scale, pairs


def measure(source: Path, output: Path, opts: QcOptions) -> tuple[dict, dict]:
    """Compare ``output`` with ``source``. Returns (report dict, plot data)."""
    _check_grid(opts)
    started = time.perf_counter()
    tail: dict = {}  # filled when a video pair runs to the end of the shorter file
    stride = opts.stride

    def wanted(i: int) -> bool:  # measured frames and the frames just before them
        return i % stride in (0, stride - 1)

    kind, src_hw, out_hw, scale, pairs = _open(source, output, tail, wanted)
    flicker = FlickerMeter(scale) if kind == "video" else None
    seams = SeamMeter(src_hw, scale, opts.tile_px, opts.overlap_px)
    fidelity = FidelityMeter()
    n = 0
    for n, ((t, src), (_, out)) in enumerate(pairs, start=1):
        i = n - 1
        if src is None or out is None:
            pass
        elif src.shape[:2] != tuple(src_hw) or out.shape[:2] != tuple(out_hw):
            raise UserError(f"frame {i}: size changed mid-stream; qc needs a fixed size")
        else:
            pair = metrics.prepare(src, out, scale)
            measured = i % stride == 0
            if flicker is not None:
                flicker.update(i, t, pair, measure=measured)
            if measured and (i // stride) % opts.seam_every == 0:
                seams.update(pair)
            if measured:
                fidelity.update(i, t, pair)
        if opts.max_frames and n >= opts.max_frames:
            break
    if n == 0:
        raise UserError(f"{source}: no frames decoded")
    elapsed = time.perf_counter() - started
    report = {
        "kind": kind,
        "source": str(source),
        "output": str(output),
        "scale": scale,
        "source_size": [int(src_hw[1]), int(src_hw[0])],
        "output_size": [int(out_hw[1]), int(out_hw[0])],
        "frames": n,
        "stride": stride,
        "flicker": flicker.result() if flicker is not None else None,
        "seams": seams.result(),
        "fidelity": fidelity.result(),
        "elapsed_s": round(elapsed, 3),
        "fps": round(n / elapsed, 2) if elapsed > 0 else None,
    }
    if kind == "video":  # None: not known (stopped at --max-frames)
        report["longer"] = tail.get("longer")
        report["frame_counts_differ"] = tail["longer"] is not None if tail else None
    plots = {
        "flicker_series": flicker.series() if flicker is not None else [],
        "heat_map": seams.heat_map(),
        "x_spans": seams.x_spans,
        "y_spans": seams.y_spans,
        "output_hw": tuple(out_hw),
    }
    return report, plots
