"""Output metadata, pure: the input's meaning rewritten for the upscaled raster.

OME-Zarr: ``multiscales`` with each level's real scale (and half-pixel translation)
in physical units, the ``omero`` channel block, and georeferencing in two documented
forms on every level array: GDAL's Zarr driver attribute ``_CRS`` and the GeoZarr
``proj:``/``spatial:`` conventions (``spatial:transform`` is that level's affine).
TIFF: ICC tag, resolution tags, OME-XML. The writers in ``pipeline.image.publish`` place them.
"""

from __future__ import annotations

import base64
from typing import Any

from pipeline.image.metadata import ICC_ATTR, NGFF_TO_OME, ImageMeta

SPATIAL_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial:",
    "description": "Spatial coordinate information",
}
PROJ_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}


# ------------------------------------------------------------------------------ geo
def _geokeys(geo: dict[int, Any]) -> dict[int, int]:
    keys = list(geo.get(34735, ()))
    out = {}
    for i in range(4, len(keys) - 3, 4):
        if keys[i + 1] == 0:  # value stored inline (a SHORT)
            out[keys[i]] = keys[i + 3]
    return out


def geo_affine(geo: dict[int, Any]) -> tuple[float, ...] | None:
    """The input's pixel-corner affine (a, b, c, d, e, f): x = a*col + b*row + c,
    y = d*col + e*row + f, as GDAL reports it (PixelIsPoint shifted half a pixel)."""
    if 34264 in geo:
        m = list(geo[34264])
        a, b, c, d, e, f = m[0], m[1], m[3], m[4], m[5], m[7]
    elif 33550 in geo and 33922 in geo:
        sx, sy = geo[33550][:2]
        i, j, _, x, y, _ = list(geo[33922])[:6]
        a, b, c, d, e, f = sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy
    else:
        return None
    if _geokeys(geo).get(1025) == 2:  # PixelIsPoint: the tiepoint is a pixel centre
        c, f = c - 0.5 * a - 0.5 * b, f - 0.5 * d - 0.5 * e
    return (float(a), float(b), float(c), float(d), float(e), float(f))


def _geo_ascii(geo: dict[int, Any], key: int) -> str:
    """An ASCII GeoKey (its text in GeoAsciiParamsTag, '|'-terminated)."""
    keys = list(geo.get(34735, ()))
    text = str(geo.get(34737, ""))
    for i in range(4, len(keys) - 3, 4):
        if keys[i] == key and keys[i + 1] == 34737:
            return text[keys[i + 3] : keys[i + 3] + keys[i + 2]].rstrip("|\0")
    return ""


MODEL_TYPES = {1: "projected", 2: "geographic", 3: "geocentric", 32767: "user-defined"}


def geo_crs_kind(geo: dict[int, Any]) -> str:
    """What the GeoKeys say the CRS is: "projected", "geographic", "geocentric",
    "user-defined" (GTModelTypeGeoKey), "engineering" (no model type and no CRS code:
    how GDAL writes a local/engineering CRS such as ``ENGCRS["Cartesian (Meter)"]``),
    "code only" (a CRS code without a model type: made by ``geo_from_zarr`` from an
    EPSG code alone), or "" (no GeoKeys)."""
    if 34735 not in geo:
        return ""
    keys = _geokeys(geo)
    if 1024 in keys:
        return MODEL_TYPES.get(keys[1024], f"model type {keys[1024]}")
    return "code only" if (2048 in keys or 3072 in keys) else "engineering"


# EPSG unit codes of ProjLinearUnitsGeoKey -> (WKT2 name, metres)
LINEAR_UNITS = {
    9001: ("metre", 1.0),
    9002: ("foot", 0.3048),
    9003: ("US survey foot", 0.3048006096012192),
}


def engineering_wkt(geo: dict[int, Any]) -> str | None:
    """WKT2 of an engineering (local) CRS as GDAL writes it in GeoKeys: its citation as
    the name, its linear unit; None for any other CRS or an unknown unit."""
    if geo_crs_kind(geo) != "engineering":
        return None
    unit = LINEAR_UNITS.get(_geokeys(geo).get(3076, 9001))
    if unit is None:
        return None
    name = (_geo_ascii(geo, 1026) or "unnamed").replace('"', "'")
    length = f'LENGTHUNIT["{unit[0]}",{unit[1]!r}]'
    return (
        f'ENGCRS["{name}",EDATUM["Unknown engineering datum"],CS[Cartesian,2],'
        f'AXIS["easting (X)",east,ORDER[1],{length}],'
        f'AXIS["northing (Y)",north,ORDER[2],{length}]]'
    )


def geo_epsg(geo: dict[int, Any]) -> int | None:
    """EPSG code of the CRS (projected, else geographic); None when user-defined."""
    keys = _geokeys(geo)
    for key in (3072, 2048):
        code = keys.get(key)
        if code and code != 32767:
            return int(code)
    return None


def level_affine(lr: tuple[float, ...], scale: int, level: int) -> list[float]:
    """Affine of output pyramid level ``level``: pixels ``2**level / scale`` LR pixels
    wide, same upper-left corner (each level is a 2x2 mean of the one below)."""
    a, b, c, d, e, f = lr
    k = 2**level / scale
    return [a * k, b * k, c, d * k, e * k, f]


# A GeoTIFF's tags besides the transform (which is ``spatial:transform``), kept on every
# level array under GEOTIFF_ATTR by their TIFF names, so that a .zarr -> .tif run writes
# the same GeoKeys (a user-defined CRS too): the GeoZarr attributes name a CRS only by
# its EPSG code, which does not say whether it is projected or geographic.
GEOTIFF_ATTR = "geotiff"
GEOTIFF_TAGS = {
    34735: "GeoKeyDirectoryTag",
    34736: "GeoDoubleParamsTag",
    34737: "GeoAsciiParamsTag",
    42112: "GDAL_METADATA",
    42113: "GDAL_NODATA",
}


def geotiff_attr(geo: dict[int, Any]) -> dict[str, Any]:
    """``{GEOTIFF_ATTR: {tag name: value}}`` for the GeoTIFF tags in ``geo`` (none when
    its GeoKeys were not the file's own: see ``geo_from_zarr``)."""
    if geo_crs_kind(geo) == "code only":
        return {}
    tags: dict[str, Any] = {}
    for code, name in GEOTIFF_TAGS.items():
        if code not in geo:
            continue
        value = geo[code]
        if code == 34735:
            tags[name] = [int(v) for v in value]
        elif code == 34736:
            tags[name] = [float(v) for v in value]
        else:
            tags[name] = str(value)
    return {GEOTIFF_ATTR: tags} if tags else {}


def _epsg_of(attrs: dict[str, Any]) -> int | None:
    code = attrs.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    url = (attrs.get("_CRS") or {}).get("url") if isinstance(attrs.get("_CRS"), dict) else None
    if isinstance(url, str) and "/EPSG/" in url:
        return int(url.rstrip("/").rsplit("/", 1)[1])
    return None


def _model_type(attrs: dict[str, Any]) -> int | None:
    """GTModelTypeGeoKey (1 projected, 2 geographic) from GDAL's ``_CRS`` WKT or PROJJSON."""
    crs = attrs.get("_CRS")
    if not isinstance(crs, dict):
        return None
    wkt = str(crs.get("wkt") or "").lstrip().upper()
    if wkt.startswith(("PROJCS", "PROJCRS")):
        return 1
    if wkt.startswith(("GEOGCS", "GEOGCRS", "GEODCRS")):
        return 2
    kind = (
        (crs.get("projjson") or {}).get("type") if isinstance(crs.get("projjson"), dict) else None
    )
    return {"ProjectedCRS": 1, "GeographicCRS": 2}.get(kind)


def _wkt_of(attrs: dict[str, Any]) -> str:
    crs = attrs.get("_CRS")
    wkt = crs.get("wkt") if isinstance(crs, dict) else None
    return str(wkt or attrs.get("proj:wkt2") or "")


def engineering_geokeys(wkt: str) -> dict[int, Any]:
    """GeoKeys (as GDAL writes them) for an engineering/local CRS given as WKT
    (``ENGCRS[...]``, WKT1 ``LOCAL_CS[...]``): its name as the citation and its linear
    unit; {} for any other WKT."""
    head = wkt.lstrip().upper()
    if not head.startswith(("ENGCRS", "ENGINEERINGCRS", "LOCAL_CS")):
        return {}
    name = wkt.split('"')[1] if wkt.count('"') >= 2 else "unnamed"
    lower = wkt.lower()
    unit = 9003 if "us survey foot" in lower else 9002 if "foot" in lower else 9001
    keys = [1, 1, 0, 3, 1025, 0, 1, 1, 1026, 34737, len(name) + 1, 0, 3076, 0, 1, unit]
    return {34735: tuple(keys), 34737: name + "|"}


def geo_from_zarr(attrs: dict[str, Any]) -> dict[int, Any]:
    """GeoTIFF tags (as ``ImageInfo.geo_tags``) for a Zarr level array's attributes: the
    transform from ``spatial:transform``; GeoKeys from our ``geotiff`` attribute, else
    made from the EPSG code (``proj:code`` or ``_CRS.url``) and, where GDAL's ``_CRS``
    gives its WKT or PROJJSON, the model type; or, with no code, an engineering CRS's
    WKT (``_CRS.wkt`` / ``proj:wkt2``). Without a model type the GeoKeys hold only
    the code (no 1024 key): enough for a .zarr output, refused for a .tif (plan)."""
    geo: dict[int, Any] = {}
    own = attrs.get(GEOTIFF_ATTR) if isinstance(attrs.get(GEOTIFF_ATTR), dict) else {}
    for code, name in GEOTIFF_TAGS.items():
        if name in own:
            geo[code] = tuple(own[name]) if code in (34735, 34736) else own[name]
    epsg = _epsg_of(attrs)
    if 34735 not in geo and epsg is None:
        geo.update(engineering_geokeys(_wkt_of(attrs)))
    if 34735 not in geo and epsg is not None:
        model = _model_type(attrs)
        crs_key = 2048 if model == 2 else 3072
        keys = [1, 1, 0, 0] + ([1024, 0, 1, model] if model else []) + [1025, 0, 1, 1]
        keys += [crs_key, 0, 1, epsg]
        keys[3] = (len(keys) - 4) // 4
        geo[34735] = tuple(keys)
    t = attrs.get("spatial:transform")
    if isinstance(t, list | tuple) and len(t) == 6:
        a, b, c, d, e, f = (float(v) for v in t)
        if 34735 in geo:  # the transform is pixel corners: PixelIsArea
            keys = list(geo[34735])
            for i in range(4, len(keys) - 3, 4):
                if keys[i] == 1025 and keys[i + 1] == 0:
                    keys[i + 3] = 1
            geo[34735] = tuple(keys)
        if b == 0 and d == 0:
            geo[33550] = (a, -e, 0.0)
            geo[33922] = (0.0, 0.0, 0.0, c, f, 0.0)
        else:
            geo[34264] = (a, b, 0.0, c, d, e, 0.0, f, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    return geo if (33550 in geo or 34264 in geo or 34735 in geo) else {}


def geo_keys_complete(geo: dict[int, Any]) -> bool:
    """Whether ``geo`` can be written as GeoTIFF tags: anything a GeoTIFF held (copied as
    it is: projected, geographic, engineering, user-defined, vertical keys), but not a
    CRS code whose model type is unknown (see ``geo_from_zarr``)."""
    return geo_crs_kind(geo) != "code only"


def geozarr_attrs(
    geo: dict[int, Any], scale: int, level: int, shape: tuple[int, int]
) -> dict[str, Any]:
    """Attributes for one OME-Zarr level array: ``_CRS`` (GDAL) + proj:/spatial:, and
    the GeoTIFF tags besides the transform (``geotiff_attr``)."""
    lr = geo_affine(geo)
    epsg = geo_epsg(geo)
    wkt = engineering_wkt(geo)
    if lr is None and epsg is None and wkt is None:
        return {}
    attrs: dict[str, Any] = geotiff_attr(geo)
    conventions = []
    if epsg is not None:
        attrs["_CRS"] = {"url": f"http://www.opengis.net/def/crs/EPSG/0/{epsg}"}
        attrs["proj:code"] = f"EPSG:{epsg}"
        conventions.append(PROJ_CONVENTION)
    elif wkt is not None:  # no code to name it by: the WKT (GDAL reads _CRS.wkt)
        attrs["_CRS"] = {"wkt": wkt}
        attrs["proj:wkt2"] = wkt
        conventions.append(PROJ_CONVENTION)
    if lr is not None:
        t = level_affine(lr, scale, level)
        h, w = shape
        xs = [t[2], t[2] + t[0] * w + t[1] * h]
        ys = [t[5], t[5] + t[3] * w + t[4] * h]
        attrs.update(
            {
                "spatial:dimensions": ["y", "x"],
                "spatial:transform_type": "affine",
                "spatial:transform": t,
                "spatial:shape": [h, w],
                "spatial:bbox": [min(xs), min(ys), max(xs), max(ys)],
                "spatial:registration": "pixel",
            }
        )
        conventions.append(SPATIAL_CONVENTION)
    attrs["zarr_conventions"] = conventions
    return attrs


# ------------------------------------------------------------------------- OME-Zarr
def level_transforms(level: int, pixel: tuple[float, float]) -> list[dict[str, Any]]:
    """Level ``level`` is a 2x2 mean applied ``level`` times: its pixels are exactly
    ``2**level`` level-0 pixels (odd sizes pad the last row/column, they do not
    stretch), and its first pixel's centre sits ``(2**level - 1) / 2`` of them in."""
    k = 2**level
    py, px = pixel
    out: list[dict[str, Any]] = [{"type": "scale", "scale": [1.0, py * k, px * k]}]
    if level:
        shift = (k - 1) / 2
        out.append({"type": "translation", "translation": [0.0, py * shift, px * shift]})
    return out


def omero_block(meta: ImageMeta, channels: int, dtype: str) -> dict[str, Any] | None:
    """The ``omero`` rendering block when the input named or coloured its channels."""
    if not (meta.channel_names or meta.channel_colors):
        return None
    top = 65535 if dtype == "uint16" else 255
    names = list(meta.channel_names) + [""] * channels
    colors = list(meta.channel_colors) + ["FFFFFF"] * channels
    return {
        "channels": [
            {
                "label": names[i] or f"channel {i}",
                "color": colors[i],
                "active": True,
                "window": {"min": 0, "max": top, "start": 0, "end": top},
            }
            for i in range(channels)
        ],
        "rdefs": {"model": "color"},
    }


def icc_attr(meta: ImageMeta) -> dict[str, str]:
    return {ICC_ATTR: base64.b64encode(meta.icc_profile).decode()} if meta.icc_profile else {}


# ----------------------------------------------------------------------------- TIFF
def tiff_resolution(meta: ImageMeta) -> dict[str, Any]:
    """tifffile ``resolution``/``resolutionunit`` for the (already scaled) meta: the
    input's resolution when it had a unit, else its physical pixel size in pixels per
    cm, else a unitless resolution (an aspect ratio) as it was."""
    unit = {"inch": 2, "centimeter": 3}.get(meta.resolution_unit)
    if meta.resolution and unit:
        return {"resolution": meta.resolution, "resolutionunit": unit}
    if meta.pixel_size and meta.pixel_unit in ("micrometer", "millimeter", "centimeter"):
        per_cm = {"micrometer": 1e4, "millimeter": 10.0, "centimeter": 1.0}[meta.pixel_unit]
        py, px = meta.pixel_size
        return {"resolution": (per_cm / px, per_cm / py), "resolutionunit": 3}
    if meta.resolution:
        return {"resolution": meta.resolution, "resolutionunit": 1}
    return {}


def tiff_slide_description(meta: ImageMeta, width: int, height: int) -> str | None:
    """An Aperio ImageDescription for a ``.tif`` output of an Aperio slide: its ``MPP``
    and ``AppMag`` (already scaled), where OpenSlide, QuPath and tifffile read them."""
    if meta.slide != "aperio" or meta.ome:
        return None
    fields = [f"{width}x{height} [0,0 {width}x{height}]"]
    if meta.magnification:
        fields.append(f"AppMag = {meta.magnification:g}")
    if meta.pixel_size and meta.pixel_unit == "micrometer":
        fields.append(f"MPP = {meta.pixel_size[1]:.6g}")
    return "Aperio Image Library (upscaled by s3diff-sr-pipeline)\r\n" + "|".join(fields)


def tiff_ome_metadata(meta: ImageMeta, channels: int) -> dict[str, Any]:
    """tifffile ``metadata`` for an OME-TIFF output: scaled physical sizes, channels.
    (Interleaved samples share one OME Channel element, so only the first name and
    colour fit there; the OME-Zarr ``omero`` block keeps them all.)"""
    md: dict[str, Any] = {"axes": "YX" if channels == 1 else "YXS"}
    if meta.pixel_size and meta.pixel_unit in NGFF_TO_OME:
        unit = NGFF_TO_OME[meta.pixel_unit]
        py, px = meta.pixel_size
        md.update(
            PhysicalSizeX=px, PhysicalSizeXUnit=unit, PhysicalSizeY=py, PhysicalSizeYUnit=unit
        )
    channel: dict[str, Any] = {}
    if meta.channel_names:
        channel["Name"] = list(meta.channel_names)
    if meta.channel_colors:
        colors = [(int(c, 16) << 8) | 0xFF for c in meta.channel_colors]
        channel["Color"] = [c - (1 << 32) if c >= 1 << 31 else c for c in colors]
    if channel:
        md["Channel"] = channel
    return md
