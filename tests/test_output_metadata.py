"""Output metadata (issue 12, points 4, 7, 8): ICC profiles and resolution, georeferencing
and COG layout, OME physical sizes and channels reach every output that can carry them.

Inputs are written by the test (Pillow, tifffile); outputs are checked with the readers
users use: Pillow for ICC/DPI, rasterio/GDAL and rio-cogeo for GeoTIFF/COG,
ome-zarr-models for OME-Zarr, tifffile for TIFF tags and OME-XML.
"""

import base64
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image, ImageCms

from pipeline.image.scaled_meta import ICC_ATTR
from pipeline.job.launch import run_job
from tests.helpers import make_config, synth_image

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
UTM_KEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)


def upscale(src: Path, out: Path, **cfg):
    cfg = make_config(
        scale=2, tile=48, overlap=12, region_out_px=64, chunk_out_px=32, run__runner="local", **cfg
    )
    return run_job(str(src), str(out), cfg, progress=False)


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_icc_profile_and_dpi_reach_png_jpeg_tiff_and_zarr(tmp_path):
    icc = srgb_profile()
    src = tmp_path / "camera.jpg"
    Image.fromarray(synth_image(40, 56)).save(src, quality=95, icc_profile=icc, dpi=(300, 300))
    for name in ("out.png", "out.jpg"):
        upscale(src, tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert im.info.get("icc_profile") == icc, name
            assert tuple(round(float(v)) for v in im.info["dpi"]) == (600, 600), name
    upscale(src, tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        tags = tif.pages[0].tags
        assert bytes(tags[34675].value) == icc
        num, den = tags[282].value
        assert num / den == pytest.approx(600)
        assert tags[296].value == 2  # inch
    with Image.open(tmp_path / "out.tif") as im:  # Pillow reads the profile from the TIFF
        assert im.info.get("icc_profile") == icc
    upscale(src, tmp_path / "out.zarr")
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs
    assert base64.b64decode(attrs[ICC_ATTR]) == icc
    upscale(tmp_path / "out.zarr", tmp_path / "again.png")  # and back from our OME-Zarr
    with Image.open(tmp_path / "again.png") as im:
        assert im.info.get("icc_profile") == icc


def test_icc_and_resolution_of_16bit_tiff_reach_16bit_png(tmp_path):
    icc = srgb_profile()
    src = tmp_path / "scan16.tif"
    tifffile.imwrite(
        src,
        synth_image(30, 34, dtype=np.uint16),
        photometric="rgb",
        resolution=(200, 200),
        resolutionunit="INCH",
        extratags=[(34675, "B", len(icc), icc, True)],
    )
    upscale(src, tmp_path / "out.png")  # our own 16-bit PNG writer
    with Image.open(tmp_path / "out.png") as im:
        assert im.info.get("icc_profile") == icc
        assert tuple(round(float(v)) for v in im.info["dpi"]) == (400, 400)


def _geotiff(path: Path, height: int = 300, width: int = 350) -> None:
    tifffile.imwrite(
        path,
        synth_image(height, width),
        photometric="rgb",
        tile=(256, 256),
        extratags=[
            (33550, "d", 3, (30.0, 30.0, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
            (34735, "H", len(UTM_KEYS), UTM_KEYS, True),
        ],
    )


def test_geotiff_to_tif_is_a_valid_cog_with_scaled_transform(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    cogeo = pytest.importorskip("rio_cogeo.cogeo")
    src = tmp_path / "scene.tif"
    _geotiff(src)
    upscale(src, tmp_path / "out.tif", output__tile_px=256, output__pyramid_min_px=256)
    valid, errors, warnings = cogeo.cog_validate(str(tmp_path / "out.tif"), quiet=True)
    assert valid, errors
    assert not warnings
    with rasterio.open(src) as lr, rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs == lr.crs and out.crs.to_epsg() == 32633
        assert out.transform.almost_equals(lr.transform @ lr.transform.scale(0.5, 0.5))
        assert out.shape == (600, 700)
        assert out.overviews(1) == [2, 4]
        assert out.block_shapes[0] == (256, 256)
        level0 = out.read()
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:  # same pixels as tifffile reads
        assert np.array_equal(np.moveaxis(level0, 0, -1), tif.pages[0].asarray())


def test_geotiff_to_zarr_keeps_crs_and_transform_per_level(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from ome_zarr_models.v05.image import Image as OmeImage

    src = tmp_path / "scene.tif"
    _geotiff(src, 90, 130)
    upscale(src, tmp_path / "out.zarr", output__pyramid_min_px=64)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    OmeImage.from_zarr(group)  # still valid OME-Zarr 0.5
    with rasterio.open(src) as lr:
        t0 = lr.transform @ lr.transform.scale(0.5, 0.5)
        crs = lr.crs
    paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
    assert len(paths) == 4  # 180x260 -> 90x130 -> 45x65 -> 23x33
    for level, path in enumerate(paths):
        attrs = group[path].attrs
        assert attrs["_CRS"] == {"url": "http://www.opengis.net/def/crs/EPSG/0/32633"}
        assert rasterio.crs.CRS.from_user_input(attrs["proj:code"]) == crs
        t = rasterio.Affine(*attrs["spatial:transform"])
        assert t.almost_equals(t0 @ t0.scale(2**level, 2**level) if level else t0)
        assert attrs["spatial:shape"] == list(group[path].shape[1:])
        assert attrs["spatial:dimensions"] == ["y", "x"]
        assert {c["name"] for c in attrs["zarr_conventions"]} == {"proj:", "spatial:"}


def test_zarr_input_keeps_its_georeferencing(tmp_path):
    """GeoTIFF -> .zarr -> .tif and -> .zarr: the CRS and the twice-scaled transform
    reach both (the GeoKeys travel in the ``geotiff`` attribute); the .tif is a COG."""
    rasterio = pytest.importorskip("rasterio")
    cogeo = pytest.importorskip("rio_cogeo.cogeo")
    src = tmp_path / "scene.tif"
    _geotiff(src, 40, 50)
    upscale(src, tmp_path / "x2.zarr")
    upscale(tmp_path / "x2.zarr", tmp_path / "x4.tif")
    upscale(tmp_path / "x2.zarr", tmp_path / "x4.zarr")
    with rasterio.open(src) as lr, rasterio.open(tmp_path / "x4.tif") as out:
        t4 = lr.transform @ lr.transform.scale(0.25, 0.25)
        assert out.crs == lr.crs and out.crs.to_epsg() == 32633
        assert out.transform.almost_equals(t4)
        assert out.shape == (160, 200)
    assert cogeo.cog_validate(str(tmp_path / "x4.tif"), quiet=True)[0]
    level0 = zarr.open_group(str(tmp_path / "x4.zarr"), mode="r")["0"].attrs
    assert level0["proj:code"] == "EPSG:32633"
    assert rasterio.Affine(*level0["spatial:transform"]).almost_equals(t4)
    assert level0["geotiff"]["GeoKeyDirectoryTag"] == list(UTM_KEYS)


def _geozarr(path: Path, attrs: dict) -> Path:
    """A single-array GeoZarr, as another tool would write it."""
    arr = zarr.create_array(str(path), shape=(30, 40), chunks=(30, 40), dtype="uint8")
    arr[:] = synth_image(30, 40)[:, :, 0]
    arr.attrs.update(attrs)
    return path


def test_geozarr_input_with_only_an_epsg_code(tmp_path):
    """A CRS named only by its code goes to .zarr; for .tif it is refused (GeoKeys need
    projected or geographic), unless GDAL's ``_CRS`` gives the WKT."""
    rasterio = pytest.importorskip("rasterio")
    from pipeline.errors import UserError

    t = [10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0]
    src = _geozarr(tmp_path / "in.zarr", {"proj:code": "EPSG:32633", "spatial:transform": t})
    with pytest.raises(UserError, match="names its CRS only by its EPSG code"):
        upscale(src, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()
    upscale(src, tmp_path / "out.zarr")
    level0 = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"].attrs
    assert level0["proj:code"] == "EPSG:32633"
    assert level0["spatial:transform"] == [5.0, 0.0, 500000.0, 0.0, -5.0, 4000000.0]
    assert "geotiff" not in level0  # no GeoKeys of its own to pass on

    wkt = rasterio.crs.CRS.from_epsg(32633).to_wkt()
    src = _geozarr(tmp_path / "wkt.zarr", {"_CRS": {"wkt": wkt}, "proj:code": "EPSG:32633",
                                           "spatial:transform": t})  # fmt: skip
    upscale(src, tmp_path / "wkt.tif")
    with rasterio.open(tmp_path / "wkt.tif") as out:
        assert out.crs.to_epsg() == 32633
        assert out.transform.almost_equals(rasterio.Affine(5.0, 0, 500000.0, 0, -5.0, 4e6))


def test_gdal_reads_crs_of_zarr_output_if_it_can_open_it(tmp_path):
    """GDAL's Zarr driver reads ``_CRS``; the GDAL inside the installed rasterio (3.10)
    cannot decode zarr-python 3's "bytes" codec, so this checks what it can."""
    rasterio = pytest.importorskip("rasterio")
    src = tmp_path / "scene.tif"
    _geotiff(src, 40, 50)
    upscale(src, tmp_path / "out.zarr")
    try:
        ds = rasterio.open(f'ZARR:"{tmp_path / "out.zarr"}":/0')
    except rasterio.errors.RasterioIOError as exc:
        pytest.skip(f"GDAL {rasterio.__gdal_version__} cannot open zarr-python 3 arrays: {exc}")
    with ds:
        assert ds.crs.to_epsg() == 32633


def test_ome_tiff_physical_sizes_units_and_channels(tmp_path):
    from ome_zarr_models.v05.image import Image as OmeImage

    src = tmp_path / "cells.ome.tif"
    image = synth_image(77, 101, channels=3)  # odd sizes: levels 154x202 .. 20x26
    tifffile.imwrite(
        src,
        np.moveaxis(image, -1, 0),
        ome=True,
        metadata={
            "axes": "CYX",
            "PhysicalSizeX": 0.65,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": 0.65,
            "PhysicalSizeYUnit": "µm",
            "Channel": {"Name": ["DAPI", "GFP", "RFP"], "Color": [65535, 16711935, -16776961]},
        },
    )
    upscale(src, tmp_path / "out.zarr", output__pyramid_min_px=32)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    model = OmeImage.from_zarr(group)
    ms = group.attrs["ome"]["multiscales"][0]
    assert [a.get("unit") for a in ms["axes"]] == [None, "micrometer", "micrometer"]
    shapes = [group[d["path"]].shape for d in ms["datasets"]]
    assert shapes == [(3, 154, 202), (3, 77, 101), (3, 39, 51), (3, 20, 26)]
    for level, d in enumerate(ms["datasets"]):
        scale = d["coordinateTransformations"][0]["scale"]
        assert scale == pytest.approx([1.0, 0.325 * 2**level, 0.325 * 2**level])
        if level:
            shift = d["coordinateTransformations"][1]["translation"]
            half = 0.325 * (2**level - 1) / 2
            assert shift == pytest.approx([0.0, half, half])
    channels = group.attrs["ome"]["omero"]["channels"]
    assert [c["label"] for c in channels] == ["DAPI", "GFP", "RFP"]
    assert [c["color"] for c in channels] == ["0000FF", "00FF00", "FF0000"]
    assert model.attributes.ome.omero is not None

    upscale(src, tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.is_ome
        xml = tif.ome_metadata
        assert 'PhysicalSizeX="0.325"' in xml and 'PhysicalSizeXUnit="µm"' in xml
        assert 'Name="DAPI"' in xml
        assert tif.series[0].shape == (154, 202, 3)
        num, den = tif.pages[0].tags[282].value
        assert num / den == pytest.approx(1e4 / 0.325, rel=1e-4)  # pixels per cm
        assert tif.pages[0].tags[296].value == 3


def test_odd_sizes_without_units_get_the_real_level_factor(tmp_path):
    src = tmp_path / "odd.png"
    Image.fromarray(synth_image(41, 67)).save(src)
    upscale(src, tmp_path / "out.zarr", output__pyramid_min_px=20)
    ms = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[1.0, 2.0**k, 2.0**k] for k in range(len(scales))]  # not w0/w
    assert len(scales) == 4  # 82x134 -> 41x67 -> 21x34 -> 11x17
