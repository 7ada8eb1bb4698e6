"""Image metadata that must reach the outputs: colour profile, resolution, physical
pixel size and channel meaning (invariant 10, "metadata is data").

The probe calls ``read_*`` once per input (headers only) and keeps the result on
``ImageInfo.meta``; the publish writers (pipeline/image/publish) scale it by the upscale
factor and write it in each format's own form. Pure helpers, no pixels.
"""

from __future__ import annotations

import base64
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger(__name__)

ICC_ATTR = "icc_profile_base64"  # OME-Zarr root attribute: the ICC profile, base64

# OME-XML unit symbols <-> OME-NGFF (UDUNITS-2) axis unit names.
OME_TO_NGFF = {
    "Å": "angstrom",
    "nm": "nanometer",
    "µm": "micrometer",
    "um": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "in": "inch",
}
NGFF_TO_OME = {v: k for k, v in OME_TO_NGFF.items() if k != "um"}
_UM_PER = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
    "inch": 25400.0,
}


@dataclass(frozen=True)
class ImageMeta:
    """What an image says about its pixels beyond their values.

    ``resolution`` is pixels per ``resolution_unit`` (x, y), as in TIFF/JFIF/pHYs.
    ``pixel_size`` is the physical size of one pixel (y, x) in ``pixel_unit`` (an
    OME-NGFF unit name such as "micrometer"). ``channel_colors`` are "RRGGBB" hex.
    """

    icc_profile: bytes = b""
    resolution: tuple[float, float] | None = None
    resolution_unit: str = ""  # "inch" | "centimeter" | "" (no unit: aspect only)
    pixel_size: tuple[float, float] | None = None
    pixel_unit: str = ""
    channel_names: tuple[str, ...] = ()
    channel_colors: tuple[str, ...] = ()
    ome: bool = False  # the input was OME (TIFF with OME-XML, or OME-Zarr)
    magnification: float | None = None  # objective power (Aperio AppMag, NDPI tag 65421)
    slide: str = ""  # "aperio" | "ndpi" | "philips": the slide format the sizes came from

    def scaled(self, factor: int) -> ImageMeta:
        """The same meaning for an image ``factor`` times larger on each side."""
        res = self.resolution
        size = self.pixel_size
        mag = self.magnification
        return replace(
            self,
            resolution=(res[0] * factor, res[1] * factor) if res else None,
            pixel_size=(size[0] / factor, size[1] / factor) if size else None,
            magnification=mag * factor if mag else None,
        )


def _rational(value: Any) -> float | None:
    if isinstance(value, tuple) and len(value) == 2:
        return value[0] / value[1] if value[1] else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_pillow(info: dict[str, Any]) -> ImageMeta:
    """From Pillow's ``Image.info`` of a PNG (iCCP, pHYs) or JPEG (APP2, JFIF)."""
    dpi = info.get("dpi")
    resolution = None
    if dpi and all(float(v) > 0 for v in dpi[:2]):
        resolution = (float(dpi[0]), float(dpi[1]))
    return ImageMeta(
        icc_profile=bytes(info.get("icc_profile") or b""),
        resolution=resolution,
        resolution_unit="inch" if resolution else "",
    )


def _ome_color(value: str) -> str:
    """OME Color (signed 32-bit RGBA integer) -> "RRGGBB"."""
    rgba = int(value) & 0xFFFFFFFF
    return f"{rgba >> 24:02X}{(rgba >> 16) & 0xFF:02X}{(rgba >> 8) & 0xFF:02X}"


def parse_ome_xml(xml: str) -> dict[str, Any]:
    """Physical sizes, units and channels of the first OME Image's Pixels."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        log.warning("OME-XML could not be parsed (%s); physical sizes are not carried", exc)
        return {}
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels")), None)
    if pixels is None:
        return {}
    out: dict[str, Any] = {}
    sx, sy = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
    if sx and sy:
        unit = pixels.get("PhysicalSizeXUnit", "µm")
        if unit not in OME_TO_NGFF or pixels.get("PhysicalSizeYUnit", unit) != unit:
            log.warning("OME physical size unit %r is not carried (unsupported)", unit)
        else:
            out["pixel_size"] = (float(sy), float(sx))
            out["pixel_unit"] = OME_TO_NGFF[unit]
    channels = [el for el in pixels if el.tag.endswith("}Channel")]
    names = tuple(c.get("Name", "") for c in channels)
    if any(names):
        out["channel_names"] = names
    colors = tuple(c.get("Color") for c in channels)
    if colors and all(colors):
        out["channel_colors"] = tuple(_ome_color(c) for c in colors)  # type: ignore[arg-type]
    return out


def aperio_fields(description: str) -> dict[str, str]:
    """``key = value`` fields of an Aperio ImageDescription ("Aperio Image Library ...",
    then "WxH ... |AppMag = 20|MPP = 0.499|...")."""
    out = {}
    for item in description.replace("\r", "\n").split("|")[1:]:
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _positive(value: Any) -> float | None:
    number = _rational(value)
    return number if number and number > 0 else None


def read_slide(tif: Any, page: Any) -> dict[str, Any]:
    """Microns per pixel and objective power of a whole-slide TIFF: Aperio's MPP and
    AppMag in the ImageDescription; NDPI's magnification tag 65421 (its pixel size is
    in its resolution tags, read as for any TIFF); Philips' DICOM_PIXEL_SPACING."""
    description = str(page.description or "")
    if description.startswith("Aperio"):
        fields = aperio_fields(description)
        out: dict[str, Any] = {"slide": "aperio"}
        mpp = _positive(fields.get("MPP"))
        if mpp:
            out.update(pixel_size=(mpp, mpp), pixel_unit="micrometer")
        mag = _positive(fields.get("AppMag"))
        if mag:
            out["magnification"] = mag
        return out
    if tif.is_ndpi:
        mag = _positive(page.tags.valueof(65421))
        return {"slide": "ndpi", **({"magnification": mag} if mag else {})}
    if tif.is_philips:
        spacing = philips_spacing_mm(tif.philips_metadata or "")
        if spacing:  # DICOM PixelSpacing: row (y), column (x), in mm
            return {"slide": "philips", "pixel_size": (spacing[0] * 1e3, spacing[1] * 1e3),
                    "pixel_unit": "micrometer"}  # fmt: skip
        return {"slide": "philips"}
    return {}


def philips_spacing_mm(xml: str) -> tuple[float, float] | None:
    """Level 0's DICOM_PIXEL_SPACING (row, column; mm) of a Philips TIFF's XML: the first
    PixelDataRepresentation (the levels are listed from full resolution down)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        log.warning("Philips XML could not be parsed (%s); its pixel size is not carried", exc)
        return None
    level = './/DataObject[@ObjectType="PixelDataRepresentation"]'
    for el in root.iterfind(f'{level}/Attribute[@Name="DICOM_PIXEL_SPACING"]'):
        values = [_positive(v) for v in (el.text or "").replace('"', " ").split()]
        if len(values) == 2 and all(values):
            return values[0], values[1]  # type: ignore[return-value]
    return None


def read_tiff(tif: Any, page: Any = None) -> ImageMeta:
    """From an open ``tifffile.TiffFile`` and the image's first page (default: the
    file's): ICC tag 34675, X/YResolution with unit, OME-XML physical sizes and
    channels, a slide's microns per pixel and objective power."""
    page = tif.pages[0] if page is None else page
    tags = page.tags
    icc = tags.get(34675)
    xres, yres = tags.get(282), tags.get(283)
    unit_tag = tags.get(296)
    unit_code = int(unit_tag.value) if unit_tag is not None else 2
    unit = {2: "inch", 3: "centimeter"}.get(unit_code, "")
    resolution = None
    if xres is not None and yres is not None:
        x, y = _rational(xres.value), _rational(yres.value)
        if x and y and x > 0 and y > 0:
            resolution = (x, y)
    meta = ImageMeta(
        icc_profile=bytes(icc.value) if icc is not None else b"",
        resolution=resolution,
        resolution_unit=unit if resolution else "",
    )
    if tif.is_ome and tif.ome_metadata:
        meta = replace(meta, ome=True, **parse_ome_xml(tif.ome_metadata))
    else:
        meta = replace(meta, **read_slide(tif, page))
    if meta.pixel_size is None and resolution and unit:
        # A scanner's resolution tags are its pixel size: carry them as physical sizes.
        per_um = _UM_PER[unit]
        meta = replace(
            meta,
            pixel_size=(per_um / resolution[1], per_um / resolution[0]),
            pixel_unit="micrometer",
        )
    return meta


def read_ome_zarr(
    multiscale: dict[str, Any], attrs: dict[str, Any], root: dict[str, Any] | None = None
) -> ImageMeta:
    """From an OME-Zarr group: level 0's scale and axis units, the ``omero`` channels
    (``attrs``: the OME attributes), and the ICC profile our own output keeps at the
    ``root`` attributes."""
    axes = multiscale.get("axes", [])
    names = [a["name"] if isinstance(a, dict) else a for a in axes]
    units = {a["name"]: a.get("unit", "") for a in axes if isinstance(a, dict)}
    icc = (root or {}).get(ICC_ATTR)
    meta = ImageMeta(ome=True, icc_profile=base64.b64decode(icc) if icc else b"")
    scale = None
    for t in multiscale["datasets"][0].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = t.get("scale")
    if scale and "y" in names and "x" in names and units.get("x") and units.get("y"):
        if units["x"] == units["y"] and units["x"] in _UM_PER:
            y, x = scale[names.index("y")], scale[names.index("x")]
            meta = replace(meta, pixel_size=(float(y), float(x)), pixel_unit=units["x"])
    omero = attrs.get("omero") or {}
    channels = omero.get("channels") or []
    if channels:
        meta = replace(
            meta,
            channel_names=tuple(str(c.get("label", "")) for c in channels),
            channel_colors=tuple(str(c.get("color", "FFFFFF")) for c in channels),
        )
    return meta
