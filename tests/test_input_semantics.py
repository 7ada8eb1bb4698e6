"""Input pixel semantics (issue 12, points 3, 5, 6, 9, 10): what the file says its pixels
mean reaches the store and the output.

Orientation is applied at ingest; TIFF compressions decode (or are refused at probe,
naming the codec); palettes are expanded to colours or refused; a channel is alpha only
where the file says so; bands (2 non-alpha channels, more than 4) run one by one; signed
and float samples keep their dtype and range. Fixtures are written by the test (numpy,
tifffile, Pillow) and outputs are read back with Pillow and tifffile.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image, ImageOps

from pipeline.errors import UserError
from pipeline.job.launch import run_job
from tests.helpers import bicubic_reference, make_config, synth_image


def upscale(src: Path, out: Path, **cfg):
    cfg = make_config(
        scale=2, tile=48, overlap=12, region_out_px=64, chunk_out_px=32, run__runner="local", **cfg
    )
    return run_job(str(src), str(out), cfg, progress=False)


def bicubic_float(image_hwc: np.ndarray, scale: int) -> np.ndarray:
    """Whole-image torch bicubic of float samples in their own range (no clamp)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(image_hwc.astype(np.float32)).permute(2, 0, 1)[None]
    up = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)
    return up[0].permute(1, 2, 0).numpy()


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def read_tiff(path: Path) -> tuple[np.ndarray, tifffile.TiffPage]:
    tif = tifffile.TiffFile(path)
    page = tif.pages[0]
    image = page.asarray()
    return (image[..., None] if image.ndim == 2 else image), page


# ------------------------------------------------------------------ unit: pure parts
@pytest.mark.unit
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_and_bands_tile_the_image(orientation):
    from pipeline.image.ingest import orient, stored_band

    stored = synth_image(13, 21, seed=orientation)
    exif = Image.Exif()
    exif[274] = orientation
    im = Image.fromarray(stored)
    im.info["exif"] = exif.tobytes()
    upright = np.asarray(ImageOps.exif_transpose(im))  # what viewers show
    assert np.array_equal(orient(stored, orientation), upright)
    h = upright.shape[0]
    bands = []
    for y0 in range(0, h, 4):
        rows, cols = stored_band(orientation, 13, 21, y0, min(y0 + 4, h))
        bands.append(orient(stored[rows, cols], orientation))
    assert np.array_equal(np.concatenate(bands), upright)


@pytest.mark.unit
def test_compression_check_names_the_codec():
    from pipeline.image.probe import compression_problem

    for code in (1, 5, 7, 8, 50000, 50001, 34887):  # none, LZW, JPEG, Deflate, ZSTD, WebP, LERC
        assert compression_problem(code) is None, code
    problem = compression_problem(12345)  # no codec of that id exists
    assert "TIFF code 12345" in problem and "damaged" not in problem


@pytest.mark.unit
def test_compression_known_but_not_decodable(monkeypatch):
    """A compression tifffile knows whose decoder is missing (as without imagecodecs)."""
    import tifffile as tf

    from pipeline.image.probe import compression_problem

    class NoLzw(dict):
        def __contains__(self, key):
            return key != 5

    monkeypatch.setattr(tf.TIFF, "DECOMPRESSORS", NoLzw())
    problem = compression_problem(5)
    assert problem.startswith("its compression LZW (TIFF code 5) cannot be decoded")


@pytest.mark.unit
def test_channel_roles_from_what_the_file_says():
    from pipeline.image.probe import pillow_channels, tiff_semantics

    assert tiff_semantics(2, (), 3) == (False, True)  # RGB
    assert tiff_semantics(2, (2,), 4) == (True, True)  # RGB + unassociated alpha
    assert tiff_semantics(2, (1,), 4) == (True, True)  # RGB + associated alpha
    assert tiff_semantics(2, (0,), 4) == (False, False)  # RGB + a band: 4 bands
    assert tiff_semantics(1, (0,), 2) == (False, False)  # two bands, not gray+alpha
    assert tiff_semantics(1, (2,), 2) == (True, False)  # gray + alpha
    assert tiff_semantics(1, (0,) * 5, 6) == (False, False)  # 6-band multispectral
    assert tiff_semantics(6, (), 3) == (False, True)  # YCbCr (JPEG-in-TIFF) decodes to RGB
    assert pillow_channels("LA", False) == (2, True, False)
    assert pillow_channels("L", True) == (2, True, False)  # tRNS gray
    assert pillow_channels("RGB", True) == (4, True, False)  # tRNS colour
    assert pillow_channels("P", False) == (3, False, True)
    assert pillow_channels("P", True) == (4, True, True)


@pytest.mark.unit
def test_sample_ranges_round_trip():
    from pipeline.pure.value_range import from_unit, sample_range, to_unit

    for dtype in ("uint8", "uint16", "int8", "int16"):
        info = np.iinfo(dtype)
        values = np.array([info.min, 0, 1, info.max], dtype)
        lo, span, bounded = sample_range(dtype)
        assert bounded and np.array_equal(
            from_unit(to_unit(values, lo, span), dtype, lo, span, True), values
        )
    lo, span, bounded = sample_range("float32")
    dem = np.array([-412.5, 0.0, 8848.0], np.float32)
    assert (lo, span, bounded) == (0.0, 1.0, False)
    assert np.array_equal(from_unit(to_unit(dem, lo, span), "float32", lo, span, False), dem)
    lo, span, bounded = sample_range("float32", (-100.0, 900.0))
    assert np.allclose(
        from_unit(np.array([-0.5, 0.5, 2.0], np.float32), "float32", lo, span, bounded),
        [-100, 400, 900],
    )


@pytest.mark.unit
def test_bands_reach_the_model_one_by_one():
    """A model that mixes colours (here: every output channel the mean of the input's)
    must not mix bands: each band is its own gray image."""
    import torch

    from workers.region import model_inputs, model_outputs

    tiles = torch.rand(2, 5, 8, 8)

    def mixing_model(x):
        return x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)

    images = model_inputs(tiles, colour=False)
    assert images.shape == (10, 3, 8, 8)
    assert torch.allclose(model_outputs(mixing_model(images), 2, 5, colour=False), tiles)
    rgb = torch.rand(2, 3, 8, 8)
    mixed = model_outputs(mixing_model(model_inputs(rgb, colour=True)), 2, 3, colour=True)
    assert torch.allclose(mixed, rgb.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1))


@pytest.mark.unit
def test_tiff_photometric_follows_channel_roles():
    from pipeline.image.publish import _photometric

    assert _photometric(1) == ("minisblack", None)
    assert _photometric(3) == ("rgb", None)
    assert _photometric(4, alpha=True) == ("rgb", ["unassalpha"])
    assert _photometric(2, alpha=True, rgb=False) == ("minisblack", ["unassalpha"])
    assert _photometric(2, alpha=False, rgb=False) == ("minisblack", ["unspecified"])
    assert _photometric(3, rgb=False) == ("minisblack", ["unspecified"] * 2)
    assert _photometric(6, rgb=False) == ("minisblack", ["unspecified"] * 5)
    assert _photometric(4, alpha=True, premultiplied=True) == ("rgb", ["assocalpha"])


@pytest.mark.unit
def test_config_keys_are_validated():
    from pipeline.config import load_config

    assert load_config().output.palette == "expand"
    assert load_config(set_items=["model.value_range=-100,3000"]).model.value_range == "-100,3000"
    with pytest.raises(UserError, match="output.palette must be one of expand, refuse"):
        load_config(set_items=["output.palette=nearest"])
    with pytest.raises(UserError, match="model.value_range expects MIN,MAX"):
        load_config(set_items=["model.value_range=dark"])
    with pytest.raises(UserError, match="MIN < MAX"):
        load_config(set_items=["model.value_range=5,1"])


# ------------------------------------------------------------ integration: real jobs
@pytest.mark.integration
def test_exif_orientation_jpeg_and_png_output_displays_upright(tmp_path):
    stored = synth_image(40, 56)  # stored 56 wide, 40 high; shown 40 wide, 56 high
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise to display
    jpg = tmp_path / "camera.jpg"
    Image.fromarray(stored).save(jpg, quality=95, exif=exif)
    with Image.open(jpg) as im:
        upright = np.asarray(ImageOps.exif_transpose(im))
    assert upright.shape == (56, 40, 3)
    upscale(jpg, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as out:
        assert out.getexif().get(274, 1) == 1
        shown = np.asarray(ImageOps.exif_transpose(out))
    assert max_diff(shown, bicubic_reference(upright, 2)) <= 1
    png = tmp_path / "scan.png"
    exif[274] = 8  # rotate 90 degrees counter-clockwise; PNG keeps it in eXIf
    Image.fromarray(stored).save(png, exif=exif)
    upscale(png, tmp_path / "out8.tif")
    out8, page = read_tiff(tmp_path / "out8.tif")
    assert page.tags.valueof(274, 1) == 1
    assert max_diff(out8, bicubic_reference(np.rot90(stored, 1), 2)) <= 1


@pytest.mark.integration
@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_tiff_orientation_applied_band_by_band(tmp_path, orientation):
    from pipeline.image.ingest import orient

    stored = synth_image(70, 90, seed=orientation)  # several row bands and tiles
    src = tmp_path / "in.tif"
    tifffile.imwrite(
        src, stored, photometric="rgb", tile=(32, 32), extratags=[(274, "H", 1, orientation, True)]
    )
    upscale(src, tmp_path / "out.tif")
    out, page = read_tiff(tmp_path / "out.tif")
    assert page.tags.valueof(274, 1) == 1
    assert (
        max_diff(out, bicubic_reference(np.ascontiguousarray(orient(stored, orientation)), 2)) <= 1
    )


@pytest.mark.integration
@pytest.mark.parametrize("compression", ["lzw", "jpeg", "zstd", "webp", "lerc"])
def test_tiff_compressions_round_trip(tmp_path, compression):
    image = synth_image(50, 70)
    src = tmp_path / f"{compression}.tif"
    tifffile.imwrite(src, image, photometric="rgb", tile=(32, 32), compression=compression)
    decoded = tifffile.imread(src)  # lossy codecs: compare with what decoding gives
    upscale(src, tmp_path / "out.tif")
    out, _ = read_tiff(tmp_path / "out.tif")
    assert max_diff(out, bicubic_reference(decoded, 2)) <= 1


@pytest.mark.integration
def test_undecodable_tiff_compression_refused_at_probe(tmp_path):
    src = tmp_path / "odd.tif"
    tifffile.imwrite(src, synth_image(16, 16), photometric="rgb", compression="zlib")
    data = bytearray(src.read_bytes())
    # Rewrite the Compression tag (259, SHORT, count 1) to an id no decoder has.
    entry = (259).to_bytes(2, "little") + (3).to_bytes(2, "little") + (1).to_bytes(4, "little")
    at = data.index(entry) + len(entry)
    data[at : at + 2] = (12345).to_bytes(2, "little")
    src.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"compression unknown \(TIFF code 12345\) cannot be"):
        upscale(src, tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists() and not list(tmp_path.glob("*.job.zarr"))


def _palette_tiff(path: Path, classes: int = 14) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    codes = np.repeat(np.repeat(rng.integers(0, classes, (8, 10)), 6, 0), 6, 1).astype(np.uint8)
    colors = np.zeros((256, 3), np.uint16)
    colors[:classes] = rng.integers(0, 256, (classes, 3)) * 257  # 8-bit colours, as GDAL
    tifffile.imwrite(path, codes, photometric="palette", colormap=colors.T.copy())
    return codes, (colors // 257).astype(np.uint8)


@pytest.mark.integration
def test_palette_tiff_expanded_or_refused(tmp_path, caplog):
    src = tmp_path / "landcover.tif"
    codes, table = _palette_tiff(src)
    with caplog.at_level(logging.INFO, logger="pipeline.job.plan"):
        upscale(src, tmp_path / "out.tif")
    assert any("colour table: expanded to RGB" in r.getMessage() for r in caplog.records)
    out, page = read_tiff(tmp_path / "out.tif")
    assert page.photometric == tifffile.PHOTOMETRIC.RGB and page.colormap is None
    assert max_diff(out, bicubic_reference(table[codes], 2)) <= 1
    with pytest.raises(UserError, match="palette .*class codes.*output.palette=refuse"):
        upscale(src, tmp_path / "refused.tif", output__palette="refuse")
    assert not (tmp_path / "refused.tif").exists()


@pytest.mark.integration
def test_png_palette_with_transparency_becomes_rgba(tmp_path):
    rgb = synth_image(30, 40)
    im = Image.fromarray(rgb).quantize(16)
    im.info["transparency"] = 0
    src = tmp_path / "icons.png"
    im.save(src, transparency=0)
    with Image.open(src) as back:
        expect = np.asarray(back.convert("RGBA"))
    upscale(src, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "RGBA"
        assert max_diff(np.asarray(out), bicubic_reference(expect, 2)) <= 1


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_png_trns_colour_becomes_alpha(tmp_path, mode):
    dtype = np.uint16 if mode == "I;16" else np.uint8
    image = synth_image(30, 40, channels=3 if mode == "RGB" else 1, dtype=dtype)
    key = tuple(int(v) for v in image[5, 7]) if mode == "RGB" else int(image[5, 7, 0])
    src = tmp_path / "keyed.png"
    Image.fromarray(image if mode == "RGB" else image[..., 0]).save(src, transparency=key)
    with Image.open(src) as back:
        assert "transparency" in back.info
    hit = (image == np.asarray(key, dtype)).all(axis=-1, keepdims=True)
    maxval = np.iinfo(dtype).max
    expect = np.concatenate([image, np.where(hit, 0, maxval).astype(dtype)], axis=-1)
    upscale(src, tmp_path / "out.tif")
    out, page = read_tiff(tmp_path / "out.tif")
    assert tuple(int(e) for e in page.extrasamples) == (2,)
    assert max_diff(out, bicubic_reference(expect, 2)) <= 1


@pytest.mark.integration
def test_two_bands_are_not_gray_alpha(tmp_path):
    bands = synth_image(40, 50, channels=2, dtype=np.uint16)
    src = tmp_path / "cyx.ome.tif"
    tifffile.imwrite(src, np.moveaxis(bands, -1, 0), ome=True, metadata={"axes": "CYX"})
    upscale(src, tmp_path / "out.tif")
    out, page = read_tiff(tmp_path / "out.tif")
    assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and out.shape == (80, 100, 2)
    assert tuple(int(e) for e in page.extrasamples) == (0,)  # unspecified, not alpha
    assert max_diff(out, bicubic_reference(bands, 2)) <= 1
    with pytest.raises(UserError, match="PNG holds gray, RGB and their alpha only"):
        upscale(src, tmp_path / "o.png")
    three = tmp_path / "three.ome.tif"  # three fluorescence channels are not RGB either
    tifffile.imwrite(three, np.zeros((3, 16, 16), np.uint8), ome=True, metadata={"axes": "CYX"})
    with pytest.raises(UserError, match="JPEG holds gray, RGB and their alpha only"):
        upscale(three, tmp_path / "o.jpg")
    # Where the file does say alpha (TIFF ExtraSamples), alpha it stays.
    alpha_src = tmp_path / "gray_alpha.tif"
    tifffile.imwrite(alpha_src, bands, photometric="minisblack", extrasamples=["unassalpha"])
    upscale(alpha_src, tmp_path / "alpha.tif")
    out, page = read_tiff(tmp_path / "alpha.tif")
    assert tuple(int(e) for e in page.extrasamples) == (2,)
    assert max_diff(out, bicubic_reference(bands, 2)) <= 1
    # Associated (premultiplied) alpha stays associated; PNG cannot say it.
    rgba = synth_image(30, 40, channels=4)
    assoc = tmp_path / "premultiplied.tif"
    tifffile.imwrite(assoc, rgba, photometric="rgb", extrasamples=["assocalpha"])
    upscale(assoc, tmp_path / "assoc.tif")
    out, page = read_tiff(tmp_path / "assoc.tif")
    assert tuple(int(e) for e in page.extrasamples) == (1,)
    assert max_diff(out, bicubic_reference(rgba, 2)) <= 1
    with pytest.raises(UserError, match="PNG alpha is unassociated"):
        upscale(assoc, tmp_path / "o.png")


@pytest.mark.integration
def test_six_band_int16_runs_per_channel_in_its_own_range(tmp_path):
    rng = np.random.default_rng(6)
    base = synth_image(40, 52, channels=6, dtype=np.uint16).astype(np.int32) - 32768
    image = np.clip(base + rng.integers(-50, 50, base.shape), -32768, 32767).astype(np.int16)
    src = tmp_path / "landsat.tif"
    tifffile.imwrite(
        src, np.moveaxis(image, -1, 0), photometric="minisblack", planarconfig="separate"
    )
    expect = np.clip(np.rint(bicubic_float(image, 2)), -32768, 32767).astype(np.int16)
    upscale(src, tmp_path / "out.tif")
    out, page = read_tiff(tmp_path / "out.tif")
    assert out.dtype == np.int16 and out.shape == (80, 104, 6)
    assert len(page.extrasamples) == 5
    assert max_diff(out, expect) <= 1
    upscale(src, tmp_path / "out.zarr")
    level0 = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][...]
    assert level0.dtype == np.int16 and level0.shape == (6, 80, 104)
    assert max_diff(np.moveaxis(level0, 0, -1), expect) <= 1
    with pytest.raises(UserError, match="PNG holds gray, RGB and their alpha only"):
        upscale(src, tmp_path / "o.png")


@pytest.mark.integration
def test_float_elevation_keeps_its_values(tmp_path):
    y, x = np.mgrid[0:45, 0:60].astype(np.float32)
    dem = (-120.0 + 3000.0 * np.sin(x / 9.0) * np.cos(y / 13.0) ** 2).astype(np.float32)
    src = tmp_path / "dem.tif"
    tifffile.imwrite(src, dem, tile=(32, 32))
    upscale(src, tmp_path / "out.tif")
    out, _ = read_tiff(tmp_path / "out.tif")
    assert out.dtype == np.float32
    assert max_diff(out, bicubic_float(dem[..., None], 2)) <= 1e-2  # of a 3000 m range
    with pytest.raises(UserError, match="PNG holds unsigned samples only"):
        upscale(src, tmp_path / "o.png")
    # A display range maps MIN..MAX to the model's 0..1; what lies outside is clipped.
    upscale(src, tmp_path / "ranged.tif", model__value_range="0,1000")
    ranged, _ = read_tiff(tmp_path / "ranged.tif")
    expect = np.clip(bicubic_float(np.clip(dem, 0, 1000)[..., None], 2), 0, 1000)
    assert ranged.min() >= 0 and ranged.max() <= 1000
    assert max_diff(ranged, expect) <= 1e-2


@pytest.mark.integration
def test_models_needing_a_display_range_refuse_float_without_one(tmp_path):
    from pipeline.job.plan import plan_job

    src = tmp_path / "dem.tif"
    tifffile.imwrite(src, np.zeros((32, 32), np.float32))
    cfg = make_config(scale=4, tile=64, overlap=32, model__name="s3diff")
    with pytest.raises(UserError, match=r"--set model.value_range=MIN,MAX"):
        plan_job(str(src), str(tmp_path / "o.tif"), cfg, overwrite=False)
    cfg = make_config(scale=4, tile=64, overlap=32, model__name="s3diff", model__value_range="0,1")
    assert (
        plan_job(str(src), str(tmp_path / "o.tif"), cfg, overwrite=False).layout.dtype == "float32"
    )


@pytest.mark.integration
def test_z_stack_is_refused_with_a_reason(tmp_path):
    src = tmp_path / "zstack.ome.tif"
    tifffile.imwrite(src, np.zeros((3, 16, 16), np.uint8), ome=True, metadata={"axes": "ZYX"})
    with pytest.raises(UserError, match="Z and T planes are not upscaled plane by plane"):
        upscale(src, tmp_path / "o.tif")
