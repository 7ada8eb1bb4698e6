"""A Cloud-Optimized GeoTIFF writer: tiled BigTIFF, overviews as reduced-resolution
IFDs, every IFD before any pixel data, data smallest overview first (the COG order
GDAL's COG driver writes and ``rio_cogeo.cogeo.cog_validate`` checks).

tifffile writes each IFD next to its own data, which a COG reader cannot use; here the
IFDs are sized in advance (their tile offset arrays have a known length), written as
placeholders, then rewritten with the real offsets once the data is placed. Tiles come
compressed from ``publish.tiles`` (a thread pool).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

import numpy as np

from pipeline.image.tiles import encoded_tiles

# TIFF field types: (code, struct format of one value)
_TYPES = {"B": (7, "B"), "s": (2, "B"), "H": (3, "H"), "I": (4, "I"), "d": (12, "d")}
_TYPES.update({"Q": (16, "Q"), "r": (5, "I")})


def _entry(code: int, kind: str, values: Any) -> tuple[int, int, int, bytes]:
    """(tag, type, count, little-endian payload) of one IFD entry."""
    typ, fmt = _TYPES[kind]
    if kind in ("B", "s"):
        raw = values.encode() + b"\0" if isinstance(values, str) else bytes(values)
        return code, typ, len(raw), raw
    vals = list(values) if isinstance(values, (list, tuple)) else [values]
    count = len(vals) // 2 if kind == "r" else len(vals)
    return code, typ, count, struct.pack(f"<{len(vals)}{fmt}", *vals)


def _ifd_bytes(entries: list[tuple[int, int, int, bytes]], pos: int, next_ifd: int) -> bytes:
    """One BigTIFF IFD at file offset ``pos``, values over 8 bytes placed after it."""
    entries = sorted(entries)
    head = struct.pack("<Q", len(entries))
    extra_pos = pos + 8 + 20 * len(entries) + 8
    body, extra = b"", b""
    for code, typ, count, raw in entries:
        if len(raw) <= 8:
            body += struct.pack("<HHQ", code, typ, count) + raw.ljust(8, b"\0")
        else:
            body += struct.pack("<HHQQ", code, typ, count, extra_pos + len(extra))
            extra += raw + b"\0" * (-len(raw) % 8)
    return head + body + struct.pack("<Q", next_ifd) + extra


PHOTOMETRIC = {"minisblack": 1, "rgb": 2}
EXTRASAMPLES = {"unspecified": 0, "assocalpha": 1, "unassalpha": 2}


def _level_entries(
    h: int, w: int, tile: int, channels: int, dtype: np.dtype, level: int,
    offsets: list[int], counts: list[int], extra: list[tuple],
    samples: tuple[str, list[str] | None] = ("", None),
) -> list[tuple[int, int, int, bytes]]:  # fmt: skip
    """``samples``: (photometric, extrasamples) as ``publish._photometric`` gives them
    (default: RGB for 3+ channels, the 2nd/4th as unassociated alpha)."""
    bits = dtype.itemsize * 8
    photometric, extras = samples
    if not photometric:
        photometric = "rgb" if channels >= 3 else "minisblack"
        extras = ["unassalpha"] if channels in (2, 4) else None
    fmt = 3 if dtype.kind == "f" else 2 if dtype.kind == "i" else 1
    entries = [
        _entry(254, "I", 1 if level else 0),
        _entry(256, "I", w),
        _entry(257, "I", h),
        _entry(258, "H", [bits] * channels),
        _entry(259, "H", 8),  # deflate
        _entry(262, "H", PHOTOMETRIC[photometric]),
        _entry(277, "H", channels),
        _entry(284, "H", 1),
        _entry(322, "H", tile),
        _entry(323, "H", tile),
        _entry(324, "Q", offsets),
        _entry(325, "Q", counts),
        _entry(339, "H", [fmt] * channels),
    ]
    if extras:
        entries.append(_entry(338, "H", [EXTRASAMPLES[e] for e in extras]))
    return entries + [_entry(*e) for e in extra]


def write_cog(
    fh: BinaryIO,
    rows: Callable[[int, int, int], np.ndarray],
    shapes: list[tuple[int, int]],
    tile: int,
    channels: int,
    dtype: str,
    level0_tags: list[tuple[int, str, Any]],
    workers: int,
    samples: tuple[str, list[str] | None] = ("", None),
) -> None:
    """Write every level of a pyramid as a COG into the open binary file ``fh``.

    rows(level, y0, y1) -> (y1 - y0, W, C) array of that level; ``level0_tags`` are
    extra (code, kind, values) entries on the full-resolution IFD (geo keys, ICC, ...).
    """
    dt = np.dtype(dtype).newbyteorder("<")
    grid = [((h + tile - 1) // tile, (w + tile - 1) // tile) for h, w in shapes]
    zeros = [[0] * (ty * tx) for ty, tx in grid]

    def ifds(offsets: list[list[int]], counts: list[list[int]]) -> bytes:
        out, pos = b"", 16
        sizes = []
        for level, (h, w) in enumerate(shapes):  # sizes do not depend on the values
            extra = level0_tags if level == 0 else []
            e = _level_entries(
                h, w, tile, channels, dt, level, zeros[level], zeros[level], extra, samples
            )
            sizes.append(len(_ifd_bytes(e, 0, 0)))
        for level, (h, w) in enumerate(shapes):
            extra = level0_tags if level == 0 else []
            off, cnt = offsets[level], counts[level]
            e = _level_entries(h, w, tile, channels, dt, level, off, cnt, extra, samples)
            nxt = pos + sizes[level] if level + 1 < len(shapes) else 0
            out += _ifd_bytes(e, pos, nxt)
            pos += sizes[level]
        return out

    header = b"II" + struct.pack("<HHHQ", 43, 8, 0, 16)
    placeholder = ifds(zeros, zeros)
    fh.write(header + placeholder)
    offsets = [list(z) for z in zeros]
    counts = [list(z) for z in zeros]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for level in reversed(range(len(shapes))):  # smallest overview first
            stream = encoded_tiles(rows, level, shapes[level], tile, channels, dtype, pool)
            for i, data in enumerate(stream):
                offsets[level][i] = fh.tell()
                counts[level][i] = len(data)
                fh.write(data)
    fh.seek(len(header))
    fh.write(ifds(offsets, counts))
