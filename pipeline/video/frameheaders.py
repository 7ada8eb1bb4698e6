"""Timecode in DPX and OpenEXR frame headers: read it, and write it where FFmpeg does not.

A shot's timecode is what editors conform by, so a sequence output carries each frame's
timecode in the header field its format defines: DPX's television header (``time_code``,
SMPTE BCD HHMMSSFF) and OpenEXR's ``timeCode`` attribute (SMPTE 12M bit layout). FFmpeg's
DPX encoder writes a 1664-byte header with no television header, and its EXR encoder no
``timeCode``; the functions here add them to the encoded bytes (pure byte edits: the
DPX header grows to the standard 2048 bytes; an EXR attribute is inserted and every
chunk offset moved by its length). Timecode arithmetic (drop-frame too) is here as well.
"""

from __future__ import annotations

import re
import struct
from fractions import Fraction

DPX_TV_OFFSET = 1920  # the television header's time_code field
DPX_FULL_HEADER = 2048
DPX_UNSET = 0xFFFFFFFF
TIMECODE = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})([:;.,])(\d{2})$")


def parse_timecode(tc: str) -> tuple[int, int, int, int, bool]:
    """``HH:MM:SS:FF`` (``;`` before the frames: drop-frame) -> (h, m, s, f, drop)."""
    m = TIMECODE.match(tc.strip())
    if not m:
        raise ValueError(f"not a timecode: {tc!r}")
    h, mi, s, sep, f = m.groups()
    return int(h), int(mi), int(s), int(f), sep in ";,"


def timecode_add(tc: str, frames: int, rate: Fraction) -> str:
    """The timecode ``frames`` frames after ``tc`` at ``rate`` (drop-frame kept as such)."""
    h, m, s, f, drop = parse_timecode(tc)
    fps = round(rate)
    if not drop:
        total = ((h * 60 + m) * 60 + s) * fps + f + frames
        total %= 24 * 3600 * fps
        f, total = total % fps, total // fps
        return f"{total // 3600:02d}:{total // 60 % 60:02d}:{total % 60:02d}:{f:02d}"
    # Drop-frame (29.97, 59.94): frame labels 0 and 1 (x2 at 59.94) are skipped at the
    # start of every minute except each tenth.
    skip = 2 * round(fps / 30)
    per_10min = fps * 600 - skip * 9
    per_min = fps * 60 - skip
    label = ((h * 60 + m) * 60 + s) * fps + f
    minutes = h * 60 + m
    n = label - skip * (minutes - minutes // 10) + frames
    n %= per_10min * 6 * 24
    tens, rem = divmod(n, per_10min)
    n += skip * 9 * tens + (skip * ((rem - skip) // per_min) if rem > skip else 0)
    f, total = n % fps, n // fps
    return f"{total // 3600:02d}:{total // 60 % 60:02d}:{total % 60:02d};{f:02d}"


def _bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def _unbcd(byte: int) -> int:
    return (byte >> 4) * 10 + (byte & 15)


def dpx_timecode_word(tc: str) -> int:
    h, m, s, f, _ = parse_timecode(tc)
    return _bcd(h) << 24 | _bcd(m) << 16 | _bcd(s) << 8 | _bcd(f)


def exr_timecode_word(tc: str) -> int:
    """SMPTE 12M ``timeAndFlags`` as OpenEXR stores it (drop-frame flag in bit 6)."""
    h, m, s, f, drop = parse_timecode(tc)
    return _bcd(f) | (drop << 6) | _bcd(s) << 8 | _bcd(m) << 16 | _bcd(h) << 24


def _dpx_endian(data: bytes) -> str:
    if data[:4] == b"SDPX":
        return ">"
    if data[:4] == b"XPDS":
        return "<"
    raise ValueError("not a DPX file")


def set_dpx_timecode(data: bytes, tc: str, rate: Fraction) -> bytes:
    """DPX bytes with ``tc`` in the television header (added when the header lacks it)."""
    e = _dpx_endian(data)
    (offset,) = struct.unpack(e + "I", data[4:8])
    out = bytearray(data)
    if offset < DPX_FULL_HEADER:
        # Grow the header to 2048 bytes: film and television headers, undefined (all
        # ones, as the standard says), then the image data moved along.
        grow = DPX_FULL_HEADER - offset
        out = bytearray(data[:offset]) + bytearray(b"\xff" * grow) + bytearray(data[offset:])
        struct.pack_into(e + "I", out, 4, DPX_FULL_HEADER)  # image data offset
        struct.pack_into(e + "I", out, 16, len(out))  # file size
        struct.pack_into(e + "I", out, 28, 384)  # industry header size (film + TV)
        (elements,) = struct.unpack(e + "H", data[770:772])
        for k in range(max(1, min(elements, 8))):
            at = 808 + 72 * k  # each image element's offset to its data
            (old,) = struct.unpack(e + "I", data[at : at + 4])
            if old not in (0, DPX_UNSET):
                struct.pack_into(e + "I", out, at, old + grow)
    struct.pack_into(e + "I", out, DPX_TV_OFFSET, dpx_timecode_word(tc))
    struct.pack_into(e + "I", out, DPX_TV_OFFSET + 4, 0)  # user bits
    struct.pack_into(e + "f", out, 1940, float(rate))  # TV frame rate
    struct.pack_into(e + "f", out, 1724, float(rate))  # film frame rate
    return bytes(out)


def dpx_timecode(data: bytes) -> str | None:
    e = _dpx_endian(data)
    (offset,) = struct.unpack(e + "I", data[4:8])
    if offset < DPX_FULL_HEADER or len(data) < DPX_TV_OFFSET + 4:
        return None
    (word,) = struct.unpack(e + "I", data[DPX_TV_OFFSET : DPX_TV_OFFSET + 4])
    if word == DPX_UNSET:
        return None
    parts = [_unbcd(word >> sh & 0xFF) for sh in (24, 16, 8, 0)]
    return "{:02d}:{:02d}:{:02d}:{:02d}".format(*parts)


def _exr_attributes(data: bytes) -> tuple[dict[str, tuple[int, int]], int]:
    """OpenEXR header attributes: name -> (value start, size), and the header's end
    (just past its terminating null byte)."""
    at, found = 8, {}
    while data[at] != 0:
        name_end = data.index(b"\0", at)
        type_end = data.index(b"\0", name_end + 1)
        (size,) = struct.unpack("<i", data[type_end + 1 : type_end + 5])
        found[data[at:name_end].decode()] = (type_end + 5, size)
        at = type_end + 5 + size
    return found, at + 1


def set_exr_timecode(data: bytes, tc: str) -> bytes:
    """Single-part scanline EXR bytes with a ``timeCode`` attribute (offsets moved)."""
    if data[:4] != b"v/1\x01" or data[5] & 0x1E:  # tiled, long names, deep, multi-part
        raise ValueError("only single-part scanline OpenEXR files are supported")
    attrs, end = _exr_attributes(data)
    if "timeCode" in attrs:
        start, _ = attrs["timeCode"]
        out = bytearray(data)
        struct.pack_into("<II", out, start, exr_timecode_word(tc), 0)
        return bytes(out)
    attr = b"timeCode\0timecode\0" + struct.pack("<iII", 8, exr_timecode_word(tc), 0)
    (first,) = struct.unpack("<Q", data[end : end + 8])
    chunks = (first - end) // 8  # the offset table runs from the header to the first chunk
    table = struct.unpack(f"<{chunks}Q", data[end : end + 8 * chunks])
    moved = struct.pack(f"<{chunks}Q", *(o + len(attr) for o in table))
    return data[: end - 1] + attr + b"\0" + moved + data[end + 8 * chunks :]


def exr_timecode(data: bytes) -> str | None:
    attrs, _ = _exr_attributes(data)
    if "timeCode" not in attrs:
        return None
    start, _ = attrs["timeCode"]
    (word,) = struct.unpack("<I", data[start : start + 4])
    h, m = _unbcd(word >> 24 & 0x3F), _unbcd(word >> 16 & 0x7F)
    s, f = _unbcd(word >> 8 & 0x7F), _unbcd(word & 0x3F)
    return f"{h:02d}:{m:02d}:{s:02d}{';' if word & 0x40 else ':'}{f:02d}"


def read_timecode(path: str, codec: str) -> str | None:
    """The timecode in a DPX or EXR file's header (None: none, or another format)."""
    if codec not in ("dpx", "exr"):
        return None
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    try:
        return dpx_timecode(head) if codec == "dpx" else exr_timecode(head)
    except (ValueError, IndexError, struct.error):
        return None


def with_timecode(data: bytes, codec: str, tc: str, rate: Fraction) -> bytes:
    """Encoded frame bytes with ``tc`` in their header (DPX and EXR; others unchanged)."""
    if codec == "dpx":
        return set_dpx_timecode(data, tc, rate)
    if codec == "exr":
        return set_exr_timecode(data, tc)
    return data
