"""Archive rasters (issue 20): COGs and GeoTIFFs with overviews, many-band scenes in
every layout, pyramidal OME-TIFFs with SubIFDs and SVS-like slides are read at their
full resolution, lazily, with their georeferencing and physical sizes scaled.

Inputs are written the way real ones are made: GDAL (through rasterio: the COG driver,
band- and pixel-interleaved GeoTIFFs, JPEG-YCbCr, an engineering CRS) and tifffile's
OME and Aperio-style writers. Outputs are checked with rasterio, rio-cogeo's
``cog_validate``, ome-zarr-models and tifffile; pixels against whole-image bicubic of
the input's level 0. Each case is one job on the in-process runner.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from pipeline.errors import DamagedInput, is_decode_error
from pipeline.image.metadata import aperio_fields
from pipeline.image.scaled_meta import (
    engineering_wkt,
    geo_affine,
    geo_crs_kind,
    geo_from_zarr,
    geo_keys_complete,
)
from pipeline.job.launch import run_job
from tests.helpers import make_config, synth_image

H, W = 96, 128  # LR size of every fixture; tiles and strips of 16/32 px


def upscale(src: Path, out: Path, **cfg):
    cfg = {"tile": 48, "region_out_px": 64, **cfg}
    cfg = make_config(
        scale=2, overlap=12, chunk_out_px=32, run__runner="local",
        output__tile_px=64, output__pyramid_min_px=64, **cfg,
    )  # fmt: skip
    return run_job(str(src), str(out), cfg, progress=False)


def bicubic(image_hwc: np.ndarray, scale: int = 2) -> np.ndarray:
    """Whole-image torch bicubic in the samples' own range, clipped and rounded to the
    dtype for integers (what the bicubic model gives)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(image_hwc.astype(np.float32)).permute(2, 0, 1)[None]
    up = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)
    out = up[0].permute(1, 2, 0).numpy()
    if image_hwc.dtype.kind == "f":
        return out
    info = np.iinfo(image_hwc.dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(image_hwc.dtype)


def bands(count: int, dtype: str, seed: int) -> np.ndarray:
    """(count, H, W) smooth bands with noise in ``dtype``'s range (float: a DEM-like range)."""
    if dtype == "float32":
        img = synth_image(H, W, channels=count, dtype=np.uint16, seed=seed)
        return (np.moveaxis(img, -1, 0).astype(np.float32) / 20.0 - 500.0).astype(np.float32)
    if dtype == "int16":
        img = synth_image(H, W, channels=count, dtype=np.uint16, seed=seed)
        return (np.moveaxis(img, -1, 0).astype(np.int32) - 32768).astype(np.int16)
    img = synth_image(H, W, channels=count, dtype=np.dtype(dtype).type, seed=seed)
    return np.ascontiguousarray(np.moveaxis(img, -1, 0))


# ------------------------------------------------------------------- input writers
def _gdal(path: Path, data: np.ndarray, crs, transform, overviews=(), **options) -> None:
    import rasterio
    from rasterio.enums import Resampling

    count, h, w = data.shape
    profile = dict(driver="GTiff", height=h, width=w, count=count, dtype=str(data.dtype))
    with rasterio.open(path, "w", crs=crs, transform=transform, **profile, **options) as ds:
        ds.write(data)
        if overviews:
            ds.build_overviews(list(overviews), Resampling.average)


def _utm(x=500000.0, y=4000000.0, px=30.0):
    from rasterio.transform import from_origin

    return from_origin(x, y, px, px)


def write_cog(path: Path) -> dict:
    """GDAL's COG driver: 3-band uint8, 32-px blocks, its own overviews; a compound CRS
    (UTM + EGM96 height: vertical GeoKeys)."""
    from rasterio.shutil import copy

    plain = path.with_name("plain.tif")
    _gdal(plain, bands(3, "uint8", 1), "EPSG:32633+5773", _utm())
    copy(plain, path, driver="COG", blocksize=32, overview_resampling="average")
    return {"out": "cog.tif", "levels": 3, "geo": True}


def write_planar_strips(path: Path) -> dict:
    """6-band uint16, band-interleaved (planar) strips of 8 rows, overviews 2 and 4."""
    _gdal(path, bands(6, "uint16", 2), "EPSG:32633", _utm(), overviews=(2, 4),
          interleave="band", tiled=False, blockysize=8)  # fmt: skip
    return {"out": "planar.zarr", "levels": 3, "geo": True}


def write_pixel_tiles_rotated(path: Path) -> dict:
    """64-band int16 (the most bands taken), pixel-interleaved 16-px tiles; a rotated
    transform (GDAL writes a ModelTransformationTag)."""
    from rasterio import Affine

    rotated = Affine(30.0, 4.0, 500000.0, 3.0, -30.0, 4000000.0)
    _gdal(path, bands(64, "int16", 3), "EPSG:32633", rotated,
          interleave="pixel", tiled=True, blockxsize=16, blockysize=16)  # fmt: skip
    # 64 bands run one by one: the whole image as one tile and one region keeps it cheap
    return {
        "out": "rotated.tif",
        "levels": 1,
        "geo": True,
        "cfg": {"tile": 128, "region_out_px": 256},
    }


def write_float_geographic(path: Path) -> dict:
    """4-band float32, band-interleaved 16-px tiles, geographic CRS, overviews 2."""
    from rasterio.transform import from_origin

    _gdal(path, bands(4, "float32", 4), "EPSG:4326", from_origin(10.0, 50.0, 0.001, 0.001),
          overviews=(2,), interleave="band", tiled=True, blockxsize=16, blockysize=16)  # fmt: skip
    return {"out": "float.tif", "levels": 2, "geo": True}


def write_jpeg_ycbcr(path: Path) -> dict:
    """3-band uint8 JPEG-in-TIFF with YCbCr photometric (GDAL's usual aerial imagery)."""
    data = bands(3, "uint8", 5)
    _gdal(path, data, "EPSG:32633", _utm(), compress="JPEG", photometric="YCBCR",
          tiled=True, blockxsize=32, blockysize=32)  # fmt: skip
    return {"out": "ycbcr.tif", "levels": 1, "geo": True, "source": np.moveaxis(data, 0, -1)}


ENGCRS = (
    'ENGCRS["Cartesian (Meter)",EDATUM["Unknown engineering datum"],CS[Cartesian,2],'
    'AXIS["easting (X)",east,ORDER[1],LENGTHUNIT["metre",1]],'
    'AXIS["northing (Y)",north,ORDER[2],LENGTHUNIT["metre",1]]]'
)


def write_engineering(path: Path) -> dict:
    """A local engineering CRS as GDAL writes it: GeoKeys with no model type, no code."""
    from rasterio.crs import CRS

    _gdal(path, bands(1, "uint8", 6), CRS.from_wkt(ENGCRS), _utm(0.0, 1000.0, 2.0))
    return {"out": "eng.tif", "levels": 1, "geo": True}


def write_engineering_zarr(path: Path) -> dict:
    write_engineering(path)
    return {"out": "eng.zarr", "levels": 1, "geo": True}


def write_ome_subifds(path: Path) -> dict:
    """Pyramidal OME-TIFF: CYX uint16 level 0, two reduced levels in SubIFDs, 0.5 µm."""
    image = bands(3, "uint16", 7)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        md = {"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm",
              "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"}  # fmt: skip
        tif.write(image, subifds=2, tile=(32, 32), compression="zlib", metadata=md)
        for k in (2, 4):
            tif.write(image[:, ::k, ::k].copy(), subfiletype=1, tile=(16, 16), compression="zlib")
    return {"out": "ome.zarr", "levels": 3, "geo": False, "um": 0.25}


APERIO = "Aperio Image Library v12.0.15\r\n"


def write_svs(path: Path) -> dict:
    """An SVS-like slide: tiled baseline with Aperio MPP and AppMag, a stripped thumbnail,
    a reduced level, then label and macro images (as Aperio orders them)."""
    rgb = np.ascontiguousarray(np.moveaxis(bands(3, "uint8", 8), 0, -1))
    desc = f"{APERIO}{W}x{H} [0,0 {W}x{H}] (32x32) JPEG/RGB Q=70|AppMag = 20|MPP = 0.499"
    label = np.full((24, 40, 3), 255, np.uint8)  # stands for a photo of the slide label
    with tifffile.TiffWriter(path) as tif:
        kw = {"photometric": "rgb", "metadata": None, "compression": "zlib"}
        tif.write(rgb, tile=(32, 32), description=desc, **kw)
        tif.write(rgb[::4, ::4].copy(), description=f"{APERIO}{W}x{H} -> 32x24", **kw)
        tif.write(rgb[::2, ::2].copy(), tile=(16, 16), description=f"{APERIO}reduced", **kw)
        tif.write(label, subfiletype=1, description=f"{APERIO}label 40x24", **kw)
        tif.write(label, subfiletype=9, description=f"{APERIO}macro 40x24", **kw)
    skipped = ("Thumbnail 32x24", "Label 40x24", "Macro 40x24")
    return {"out": "slide.tif", "levels": 2, "geo": False, "skipped": skipped}


PHILIPS_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<DataObject ObjectType="DPUfsImport">
<Attribute Name="PIM_DP_SCANNED_IMAGES" PMSVR="IDataObjectArray"><Array>
<DataObject ObjectType="DPScannedImage">
<Attribute Name="PIM_DP_IMAGE_TYPE" PMSVR="IString">WSI</Attribute>
<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" PMSVR="IDataObjectArray"><Array>
<DataObject ObjectType="PixelDataRepresentation">
<Attribute Name="DICOM_PIXEL_SPACING" PMSVR="IDoubleArray">"0.00025" "0.00025"</Attribute>
</DataObject>
<DataObject ObjectType="PixelDataRepresentation">
<Attribute Name="DICOM_PIXEL_SPACING" PMSVR="IDoubleArray">"0.0005" "0.0005"</Attribute>
</DataObject>
</Array></Attribute></DataObject></Array></Attribute>
</DataObject>"""


def write_philips(path: Path) -> dict:
    """A Philips-like slide: DP XML with each level's DICOM_PIXEL_SPACING (mm), tiled
    levels, then label and macro pages."""
    rgb = np.ascontiguousarray(np.moveaxis(bands(3, "uint8", 9), 0, -1))
    with tifffile.TiffWriter(path) as tif:
        kw = {"photometric": "rgb", "metadata": None, "software": "Philips DP v1.0"}
        tif.write(rgb, tile=(32, 32), description=PHILIPS_XML, **kw)
        tif.write(rgb[::2, ::2].copy(), tile=(32, 32), description="level 1", **kw)
        tif.write(rgb[:20, :30].copy(), description="Label", **kw)
        tif.write(rgb[:20, :30].copy(), description="Macro", **kw)
    return {"out": "philips.zarr", "levels": 2, "geo": False, "um": 0.125,
            "skipped": ("Label 30x20", "Macro 30x20")}  # fmt: skip


LAYOUTS = {
    "cog-overviews": write_cog,
    "planar-strips-6band-uint16": write_planar_strips,
    "pixel-tiles-64band-int16-rotated": write_pixel_tiles_rotated,
    "planar-tiles-float32-geographic": write_float_geographic,
    "jpeg-ycbcr": write_jpeg_ycbcr,
    "engineering-crs-tif": write_engineering,
    "engineering-crs-zarr": write_engineering_zarr,
    "ome-subifds": write_ome_subifds,
    "svs-like": write_svs,
    "philips-like": write_philips,
}


def _level0(src: Path) -> np.ndarray:
    """The input's full-resolution image as (H, W, C), decoded by tifffile."""
    with tifffile.TiffFile(src) as tif:
        series = tif.series[0]
        image = series.levels[0].asarray()
        axes = series.axes
    if axes.startswith(("C", "S")) and image.ndim == 3:
        image = np.moveaxis(image, 0, -1)
    return image[..., None] if image.ndim == 2 else image


def _check_geo_tif(src: Path, out: Path) -> None:
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    valid, errors, warnings = cog_validate(str(out), quiet=True)
    assert valid and not warnings, (errors, warnings)
    with rasterio.open(src) as lr, rasterio.open(out) as hr:
        assert hr.crs == lr.crs, (hr.crs, lr.crs)
        assert hr.transform.almost_equals(lr.transform @ lr.transform.scale(0.5, 0.5))
        assert (hr.width, hr.height, hr.count) == (2 * lr.width, 2 * lr.height, lr.count)
        assert hr.dtypes == lr.dtypes
        assert hr.overviews(1)  # a COG output has overviews of its own


def _check_geo_zarr(src: Path, level0: zarr.Array) -> None:
    import rasterio

    with rasterio.open(src) as lr:
        attrs = dict(level0.attrs)
        t = rasterio.Affine(*attrs["spatial:transform"])
        assert t.almost_equals(lr.transform @ lr.transform.scale(0.5, 0.5))
        if lr.crs.to_epsg():
            assert attrs["proj:code"] == f"EPSG:{lr.crs.to_epsg()}"
        else:  # no code: GDAL's _CRS with the WKT, the same CRS
            assert rasterio.crs.CRS.from_wkt(attrs["_CRS"]["wkt"]) == lr.crs
        assert "GeoKeyDirectoryTag" in attrs["geotiff"]


@pytest.mark.integration
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_archive_layout_read_at_full_resolution(tmp_path, caplog, layout):
    src = tmp_path / "in.tif"
    case = LAYOUTS[layout](src)
    with tifffile.TiffFile(src) as tif:  # the fixture is what it claims to be
        assert len(tif.series[0].levels) == case["levels"]
    image = _level0(src)
    out = tmp_path / case["out"]
    with caplog.at_level(logging.INFO, logger="pipeline"):
        upscale(src, out, **case.get("cfg", {}))
    expect = bicubic(image)
    tol = 1e-2 if image.dtype.kind == "f" else 1
    if out.suffix == ".zarr":
        from ome_zarr_models.v05.image import Image as OmeImage

        group = zarr.open_group(str(out), mode="r")
        OmeImage.from_zarr(group)
        got = np.moveaxis(group["0"][...], 0, -1)
    else:
        with tifffile.TiffFile(out) as tif:
            # Every page is a level of the output's own pyramid (COG overviews or
            # SubIFDs): nothing else of the input (thumbnail, label, macro) is copied.
            pages = [*tif.pages, *(tif.pages[0].pages or ())]
            sizes = [(-(-2 * H // 2**k), -(-2 * W // 2**k)) for k in range(len(pages))]
            assert sorted((p.shape[:2] for p in pages), reverse=True) == sizes
            got = tif.pages[0].asarray()
        got = got[..., None] if got.ndim == 2 else got
    assert got.dtype == image.dtype and got.shape == expect.shape == (2 * H, 2 * W, image.shape[2])
    assert np.abs(got.astype(np.float64) - expect).max() <= tol

    if case["levels"] > 1:  # one line names what was not read
        lines = [r.getMessage() for r in caplog.records if "not read:" in r.getMessage()]
        assert len(lines) == 1 and f"{case['levels'] - 1} reduced level(s)" in lines[0]
        assert all(name in lines[0] for name in case.get("skipped", ())), lines[0]
    if case["geo"] and out.suffix == ".tif":
        _check_geo_tif(src, out)
    if case["geo"] and out.suffix == ".zarr":
        _check_geo_zarr(src, zarr.open_group(str(out), mode="r")["0"])
    if layout == "jpeg-ycbcr":  # YCbCr decoded to the source's RGB as well as GDAL does
        import rasterio

        with rasterio.open(src) as lr:
            gdal_rgb = np.moveaxis(lr.read(), 0, -1).astype(np.float64)
        source = case["source"].astype(np.float64)
        ours, gdal = np.abs(image - source).mean(), np.abs(gdal_rgb - source).mean()
        assert ours <= 1.1 * gdal, (ours, gdal)  # (they differ in chroma upsampling)
    if "um" in case:  # the input's physical pixel size, halved
        ms = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]
        assert [a.get("unit") for a in ms["axes"]][1:] == ["micrometer", "micrometer"]
        scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert scale == pytest.approx([1.0, case["um"], case["um"]])
    if layout == "svs-like":
        with tifffile.TiffFile(out) as tif:
            page = tif.pages[0]
            fields = aperio_fields(page.description)
            assert float(fields["MPP"]) == pytest.approx(0.2495)  # halved
            assert float(fields["AppMag"]) == 40  # doubled
            num, den = page.tags[282].value
            assert num / den == pytest.approx(1e4 / 0.2495, rel=1e-4)  # pixels per cm


# --------------------------------------------------------------------- honest errors
@pytest.mark.integration
def test_damaged_bytes_and_bugs_are_told_apart(tmp_path, monkeypatch, capsys):
    """Bytes that fail to decode: "damaged or truncated", exit 2. Any other failure in
    ingest is a bug of ours: its own type in one line, exit 1, no traceback."""
    from pipeline.cli import main as cli
    from pipeline.image import ingest, probe

    src = tmp_path / "scene.tif"
    write_cog(src)
    data = src.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) - 2000])  # the last tiles of level 0 are gone
    args = ["-o", str(tmp_path / "o.tif"), "--model", "bicubic", "--set", "run.runner=local"]
    assert cli.main([str(cut), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "damaged or truncated" in err[-1]

    def bug(*a, **k):
        raise TypeError("a bug of ours")

    monkeypatch.setattr(ingest, "read_rows", bug)
    assert cli.main([str(src), *args]) == 1
    err = capsys.readouterr().err
    assert "error: TypeError: a bug of ours (rerun with --debug" in err
    assert "damaged" not in err and "Traceback" not in err
    assert not (tmp_path / "o.tif").exists()

    def probe_bug(series):  # a ValueError of ours at probe is not the file's fault either
        raise ValueError("a probe bug of ours")

    monkeypatch.setattr(probe, "image_series", probe_bug)
    assert cli.main([str(src), *args]) == 1
    err = capsys.readouterr().err
    assert "error: ValueError: a probe bug of ours" in err and "damaged" not in err


# ----------------------------------------------------------------------- unit parts
@pytest.mark.unit
def test_decode_errors_are_codec_and_structure_errors_only():
    import zlib

    import imagecodecs

    try:
        imagecodecs.zlib_decode(b"\x78\x9cnot deflate data")
    except Exception as exc:  # noqa: BLE001 - whatever the codec raises
        assert is_decode_error(exc), type(exc)
    else:
        raise AssertionError("garbage decoded")
    assert is_decode_error(tifffile.TiffFileError("corrupted tile"))
    assert is_decode_error(zlib.error("incomplete"))
    assert is_decode_error(OSError("image file is truncated"), pillow=True)
    assert not is_decode_error(TypeError("path=(slice(0, 352)) is not a string"))
    assert not is_decode_error(ValueError("a bug"))
    assert not is_decode_error(FileNotFoundError("gone"))
    assert "truncated" in str(DamagedInput("truncated"))


def _keys(*entries: int) -> tuple[int, ...]:
    return (1, 1, 0, len(entries) // 4, *entries)


@pytest.mark.unit
def test_geokeys_kinds_and_what_can_be_written():
    projected = {34735: _keys(1024, 0, 1, 1, 3072, 0, 1, 32633)}
    geographic = {34735: _keys(1024, 0, 1, 2, 2048, 0, 1, 4326)}
    user = {34735: _keys(1024, 0, 1, 32767, 3072, 0, 1, 32767)}
    engineering = {
        34735: _keys(1025, 0, 1, 1, 1026, 34737, 18, 0, 3076, 0, 1, 9002),
        34737: "Cartesian (Meter)|",
    }
    code_only = {34735: _keys(1025, 0, 1, 1, 3072, 0, 1, 32633)}  # from a bare proj:code
    kinds = [geo_crs_kind(g) for g in (projected, geographic, user, engineering, code_only)]
    assert kinds == ["projected", "geographic", "user-defined", "engineering", "code only"]
    assert [geo_keys_complete(g) for g in (projected, user, engineering, code_only)] == [
        True,
        True,
        True,
        False,
    ]
    wkt = engineering_wkt(engineering)
    assert wkt is not None and wkt.startswith('ENGCRS["Cartesian (Meter)"')
    assert 'LENGTHUNIT["foot",0.3048]' in wkt
    assert engineering_wkt(projected) is None
    # A foreign GeoZarr that gives an engineering CRS only as WKT: GeoKeys as GDAL's
    t = [2.0, 0.0, 0.0, 0.0, -2.0, 1000.0]
    back = geo_from_zarr({"proj:wkt2": wkt, "spatial:transform": t})
    assert geo_crs_kind(back) == "engineering" and engineering_wkt(back) == wkt
    assert geo_affine(back) == tuple(t)


@pytest.mark.unit
def test_aperio_description_fields():
    desc = (
        f"{APERIO}46920x33014 [0,100 46000x32914] (256x256) JPEG/RGB Q=30|AppMag = 20|MPP = 0.4990"
    )
    assert aperio_fields(desc) == {"AppMag": "20", "MPP": "0.4990"}
