"""HDR10 static metadata on the output: the encoder's own fields, checked at plan time.

Probe (``pipeline/video/picture.py``) reads the source's SMPTE ST 2086 mastering display and
its content light level from decoded frame side data. They describe the master, not the
pixels, so an upscale keeps them unchanged; they go into the bitstream (HEVC/AV1 SEI and
metadata OBUs), where every player and TV reads them, through the encoders' own options:
x265 ``master-display``/``max-cll``, SVT-AV1 ``mastering-display``/``content-light``.
The container's copy (Matroska ``MasteringMetadata``, MP4 ``mdcv``/``clli``) is written
for libx265 output through a template stream (``pipeline/video/hdr_container.py``); SVT-AV1
output has it in the bitstream only.

Dynamic metadata (HDR10+, Dolby Vision RPU) is computed per frame from the master's
pixels and cannot follow an upscale: refused, or dropped on request.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from typing import Any

from pipeline.errors import UserError

log = logging.getLogger(__name__)

# Encoders that write HDR10 static metadata into the bitstream from their options.
HDR10_ENCODERS = ("libx265", "libsvtav1")


def _q(pair: tuple[int, int]) -> Fraction:
    return Fraction(pair[0], pair[1]) if pair[1] else Fraction(0)


def x265_params(mastering: Any, cll: Any) -> list[str]:
    """x265 options: ``master-display=G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)`` in 0.00002
    (chromaticity) and 0.0001 cd/m2 (luminance) units, ``max-cll=MaxCLL,MaxFALL``."""
    out = []
    if mastering:
        r, g, b = ((_q(mastering[i]), _q(mastering[i + 1])) for i in (0, 2, 4))
        wp = (_q(mastering[6]), _q(mastering[7]))
        lo, hi = _q(mastering[8]), _q(mastering[9])

        def xy(p: tuple[Fraction, Fraction]) -> str:
            return f"({round(p[0] * 50000)},{round(p[1] * 50000)})"

        out.append(
            f"master-display=G{xy(g)}B{xy(b)}R{xy(r)}WP{xy(wp)}"
            f"L({round(hi * 10000)},{round(lo * 10000)})"
        )
        out.append("hdr10=1")
    if cll:
        out.append(f"max-cll={cll[0]},{cll[1]}")
    return out


def svtav1_params(mastering: Any, cll: Any) -> list[str]:
    """SVT-AV1 options: ``mastering-display=G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)`` as
    decimals, ``content-light=MaxCLL,MaxFALL``."""
    out = []
    if mastering:

        def xy(i: int) -> str:
            return f"({float(_q(mastering[i])):.5f},{float(_q(mastering[i + 1])):.5f})"

        lo, hi = _q(mastering[8]), _q(mastering[9])
        out.append(
            f"mastering-display=G{xy(2)}B{xy(4)}R{xy(0)}WP{xy(6)}L({float(hi):.4f},{float(lo):.4f})"
        )
    if cll:
        out.append(f"content-light={cll[0]},{cll[1]}")
    return out


def merge_params(existing: str | None, extra: list[str]) -> str:
    """``key=value:key=value`` codec params with ``extra`` added (the user's win)."""
    items = [p for p in (existing or "").split(":") if p]
    keys = {p.split("=", 1)[0] for p in items}
    return ":".join(items + [p for p in extra if p.split("=", 1)[0] not in keys])


def hdr10_options(codec: str, options: dict[str, str], mastering: Any, cll: Any) -> None:
    """Add the encoder options that write ``mastering``/``cll`` to ``options`` in place."""
    if not (mastering or cll):
        return
    if codec == "libx265":
        key, extra = "x265-params", x265_params(mastering, cll)
    elif codec == "libsvtav1":
        key, extra = "svtav1-params", svtav1_params(mastering, cll)
    else:
        return
    options[key] = merge_params(options.get(key), extra)


def check_hdr(info: Any, codec: str, drop_unsupported: bool) -> None:
    """Refuse (or, with --drop-unsupported, warn about) HDR metadata the output cannot
    keep: dynamic metadata always, static HDR10 metadata with an encoder that cannot
    write it."""
    if info.dynamic_hdr:
        what = f"{info.path} carries {' and '.join(info.dynamic_hdr)} dynamic HDR metadata"
        if not drop_unsupported:
            raise UserError(
                f"{what}, which is computed from the master's pixels and cannot follow an "
                "upscale; pass --drop-unsupported to write the output with its HDR10 static "
                "metadata only"
            )
        log.warning("%s: left out (--drop-unsupported)", what)
    if (info.mastering or info.cll) and codec not in HDR10_ENCODERS:
        what = f"{info.path} is HDR10 (mastering display / content light level metadata)"
        if not drop_unsupported:
            raise UserError(
                f"{what} and codec {codec} cannot carry it; use --codec libx265 or "
                "libsvtav1, or pass --drop-unsupported to write it without"
            )
        log.warning("%s; codec %s cannot carry it: written without", what, codec)
    elif info.mastering or info.cll:
        log.info("probe: HDR10 metadata kept (%s)", describe(info.mastering, info.cll))


def describe(mastering: Any, cll: Any) -> str:
    """One line for the log: peak/min luminance and MaxCLL/MaxFALL."""
    parts = []
    if mastering:
        parts.append(
            f"mastering display {float(_q(mastering[9])):g}/{float(_q(mastering[8])):g} cd/m2"
        )
    if cll:
        parts.append(f"MaxCLL {cll[0]}, MaxFALL {cll[1]}")
    return ", ".join(parts)
