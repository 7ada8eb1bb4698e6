"""Every supported input and output format round-trips; refused cases give their message.

Real files written by the test (Pillow, tifffile, zarr), the real job with the
in-process runner, outputs read back with the same libraries users' tools build on.
"""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from pipeline.errors import UserError
from pipeline.job.launch import run_job
from tests.helpers import bicubic_reference, make_config, synth_image

pytestmark = pytest.mark.integration


def upscale(src: Path, out: Path, **cfg):
    cfg = make_config(
        scale=2, tile=48, overlap=12, region_out_px=64, chunk_out_px=32, run__runner="local", **cfg
    )
    return run_job(str(src), str(out), cfg, progress=False)


def assert_close(out: np.ndarray, ref: np.ndarray, tol: int = 1):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= tol


def _save_pil(path: Path, arr: np.ndarray, mode: str | None = None):
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, mode).save(path)


@pytest.mark.parametrize(
    "channels,dtype,kind",
    [
        (3, np.uint8, "png"),
        (4, np.uint8, "png"),
        (1, np.uint8, "png"),
        (2, np.uint8, "png"),
        (1, np.uint16, "png"),
        (3, np.uint8, "jpg"),
        (3, np.uint16, "tif"),
        (4, np.uint16, "tif"),
        (1, np.uint8, "tif"),
        (3, np.uint8, "ome.tif"),
        (3, np.uint8, "zarr"),
        (1, np.uint16, "zarr"),
    ],
)
def test_inputs_round_trip_to_tiff(tmp_path, channels, dtype, kind):
    image = synth_image(77, 101, channels=channels, dtype=dtype, seed=channels)
    src = tmp_path / f"in.{kind}"
    if kind == "png":
        _save_pil(src, image)
    elif kind == "jpg":
        Image.fromarray(image).save(src, quality=95)
        image = np.asarray(Image.open(src))  # compare against what JPEG decoding gives
    elif kind == "tif":
        tifffile.imwrite(
            src,
            image,
            tile=(32, 32),
            photometric="rgb" if channels >= 3 else "minisblack",
            extrasamples=["unassalpha"] if channels == 4 else None,
        )
    elif kind == "ome.tif":
        tifffile.imwrite(src, np.moveaxis(image, -1, 0), ome=True, metadata={"axes": "CYX"})
    else:
        arr = zarr.create_array(
            str(src), shape=image.shape, dtype=image.dtype, chunks=(32, 32, channels)
        )
        arr[...] = image
    upscale(src, tmp_path / "out.tif")
    out = tifffile.imread(tmp_path / "out.tif")
    if out.ndim == 2:
        out = out[..., None]
    # Gray goes through the model as 3 equal channels and comes back as one; alpha goes
    # through plain bicubic: either way the bicubic model must match per-channel bicubic.
    assert_close(out, bicubic_reference(image, 2))


def test_ome_zarr_output_pyramid_and_metadata(tmp_path, png_rgb):
    image = np.asarray(Image.open(png_rgb))
    upscale(png_rgb, tmp_path / "out.zarr", output__pyramid_min_px=64)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    paths = [d["path"] for d in ms["datasets"]]
    assert paths == ["0", "1", "2", "3"]  # 300x400 -> 150x200 -> 75x100 -> 38x50
    level0 = group["0"][...]
    assert level0.shape == (3, 300, 400)
    assert_close(np.moveaxis(level0, 0, -1), bicubic_reference(image, 2))
    level1 = group["1"][...].astype(np.float32)
    expect1 = level0.reshape(3, 150, 2, 200, 2).astype(np.float32).mean(axis=(2, 4))
    assert np.abs(level1 - np.rint(expect1)).max() <= 1
    assert group["3"].shape == (3, 38, 50)
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]
    # Our own OME-Zarr output is a valid input too.
    upscale(tmp_path / "out.zarr", tmp_path / "again.tif")
    assert tifffile.imread(tmp_path / "again.tif").shape == (600, 800, 3)


def test_bigtiff_output_is_tiled_pyramid(tmp_path, png_rgb):
    upscale(png_rgb, tmp_path / "out.tiff", output__pyramid_min_px=64, output__tile_px=64)
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif:
        assert tif.is_bigtiff
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 64
        assert [p.shape for p in page.pages] == [(150, 200, 3), (75, 100, 3), (38, 50, 3)]


def test_geotiff_keeps_crs_and_scales_transform(tmp_path):
    src = tmp_path / "geo.tif"
    keys = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)
    tifffile.imwrite(
        src,
        synth_image(64, 80),
        photometric="rgb",
        extratags=[
            (33550, "d", 3, (10.0, 10.0, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
            (34735, "H", len(keys), keys, True),
        ],
    )
    upscale(src, tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        tags = tif.pages[0].tags
        assert tuple(tags[33550].value) == (5.0, 5.0, 0.0)
        assert tuple(tags[33922].value) == (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0)
        assert tuple(tags[34735].value) == keys


def _read_png16(path: Path) -> np.ndarray:
    data = path.read_bytes()
    w, h, depth, color = struct.unpack(">IIBB", data[16:26])
    assert depth == 16
    chans = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, -1)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].copy().view(">u2").reshape(h, w, chans).astype(np.uint16)


def test_png_and_jpeg_outputs(tmp_path, png_rgb):
    image = np.asarray(Image.open(png_rgb))
    ref = bicubic_reference(image, 2)
    upscale(png_rgb, tmp_path / "out.png")
    assert_close(np.asarray(Image.open(tmp_path / "out.png")), ref)
    upscale(png_rgb, tmp_path / "out.jpg")
    jpg = np.asarray(Image.open(tmp_path / "out.jpg")).astype(int)
    Image.fromarray(ref).save(tmp_path / "ref.jpg", quality=95)  # same encoder, same quality
    ref_jpg = np.asarray(Image.open(tmp_path / "ref.jpg")).astype(int)
    assert jpg.shape == ref.shape and np.abs(jpg - ref_jpg).mean() < 0.5
    src16 = tmp_path / "in16.tif"
    image16 = synth_image(40, 50, dtype=np.uint16)
    tifffile.imwrite(src16, image16, photometric="rgb")
    upscale(src16, tmp_path / "out16.png")
    assert_close(_read_png16(tmp_path / "out16.png"), bicubic_reference(image16, 2))


def test_refused_outputs_and_inputs(tmp_path, png_rgb):
    with pytest.raises(UserError, match=r"over the 0 MiB limit .*write .zarr or .tif"):
        upscale(png_rgb, tmp_path / "big.png", output__max_in_memory_mb=0)
    src16 = tmp_path / "in16.tif"
    tifffile.imwrite(src16, synth_image(20, 20, dtype=np.uint16), photometric="rgb")
    with pytest.raises(UserError, match="JPEG holds 8-bit samples only"):
        upscale(src16, tmp_path / "o.jpg")
    with pytest.raises(UserError, match="cannot tell the output format"):
        upscale(png_rgb, tmp_path / "o.bmp")
    rgb16png = tmp_path / "rgb16.png"
    from pipeline.image.publish import write_png16

    write_png16(rgb16png, synth_image(10, 10, dtype=np.uint16))
    with pytest.raises(UserError, match="16-bit RGB PNG"):
        upscale(rgb16png, tmp_path / "o.tif")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(UserError, match="not a supported input"):
        upscale(text, tmp_path / "o.tif")
    float_tif = tmp_path / "float.tif"  # float32/int16 are upscaled (test_input_semantics)
    tifffile.imwrite(float_tif, np.zeros((8, 8), np.float64))
    with pytest.raises(UserError, match="float64 samples; supported are"):
        upscale(float_tif, tmp_path / "o.tif")
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob("big.*"))
