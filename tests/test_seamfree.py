"""Invariant 1: bicubic through tiles equals whole-image bicubic within 1/255.

Runs the real job (real Zarr store, real region worker, real TIFF/PNG files) with the
in-process runner so many tile/overlap/size combinations stay fast; one case runs on
local Ray to show the runners agree.
"""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.job.launch import run_job
from tests.helpers import bicubic_reference, make_config, synth_image

pytestmark = pytest.mark.integration

CASES = [
    # (height, width, scale, tile, overlap, region_out_px, window)
    (677, 1001, 2, 128, 32, 512, "gaussian"),
    (677, 1001, 3, 200, 6, 768, "cosine"),
    (100, 77, 4, 64, 6, 128, "gaussian"),  # regions cut through tiles both ways
    (61, 45, 2, 128, 16, 2048, "gaussian"),  # image smaller than one tile
    (300, 40, 2, 64, 12, 256, "gaussian"),  # narrower than a tile on one axis only
    (129, 257, 4, 64, 48, 256, "cosine"),  # large overlap (stride 16)
]


@pytest.mark.parametrize("h,w,scale,tile,overlap,region,window", CASES)
def test_tiled_bicubic_equals_whole_image(
    tmp_path: Path, h, w, scale, tile, overlap, region, window
):
    image = synth_image(h, w, seed=h + w)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image, photometric="rgb")
    cfg = make_config(
        scale=scale,
        tile=tile,
        overlap=overlap,
        region_out_px=region,
        chunk_out_px=region // 2 if region % 32 == 0 else region,
        window=window,
        run__runner="local",
    )
    run_job(str(src), str(tmp_path / "out.tif"), cfg, progress=False)
    out = tifffile.imread(tmp_path / "out.tif")
    ref = bicubic_reference(image, scale)
    assert out.shape == ref.shape
    diff = np.abs(out.astype(int) - ref.astype(int))
    where = np.unravel_index(diff.argmax(), diff.shape)
    assert diff.max() <= 1, f"max diff {diff.max()} at {where}"


def test_seam_free_on_ray_16bit(tmp_path: Path, ray_local):
    image = synth_image(333, 251, dtype=np.uint16, seed=3)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image, photometric="rgb", tile=(64, 64))
    cfg = make_config(scale=2, tile=96, overlap=24, region_out_px=128, chunk_out_px=64)
    run_job(str(src), str(tmp_path / "out.tif"), cfg, progress=False)
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.dtype == np.uint16
    ref = bicubic_reference(image, 2)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 65535 // 255


def test_too_small_overlap_is_refused(tmp_path: Path):
    from pipeline.errors import UserError

    cfg = make_config(tile=64, overlap=2)
    with pytest.raises(UserError, match="overlap 2 is too small"):
        run_job(str(tmp_path / "x.png"), str(tmp_path / "y.tif"), cfg, progress=False)
