"""The pure region compute (workers/region.py) on arrays alone: it equals the numpy
reference blend byte for byte, it is seam-free against whole-image bicubic, it does not
depend on how a frame is cut into regions, and the out-of-memory back-off changes no
sample."""

import numpy as np
import pytest
import torch

from pipeline.pure.tiling import (
    accumulate,
    halo_box,
    normalise,
    plan_grid,
    plan_regions,
    tile_window,
    tiles_for_region,
)
from pipeline.pure.value_range import from_unit, sample_range, to_unit
from tests.helpers import bicubic_reference
from workers.region import RegionSpec, Samples, upscale_region
from workers.upscaler import bicubic_upscale

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(h: int, w: int, c: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return (rng.standard_normal((h, w, c)) * 40 + 100).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, (h, w, c)).astype(dtype)


def _run(
    image, scale, tile, overlap, region_px, window="gaussian", oom_every=0, colour=True, context=0
):
    """The whole frame through ``upscale_region``, region by region."""
    h, w, c = image.shape
    grid = plan_grid(h, w, tile, overlap)
    low, span, bounded = sample_range(image.dtype.name)
    samples = Samples(c, 0, colour, image.dtype.name, low, span, bounded)
    spec = RegionSpec(grid, scale, samples, overlap, window, context)
    out = np.zeros((h * scale, w * scale, c), image.dtype)
    batch = [4]
    calls = [0]

    def upscale(images):
        calls[0] += 1
        if oom_every and calls[0] % oom_every == 0 and batch[0] > 1:
            batch[0] //= 2  # what the worker does on out-of-memory: a smaller batch
            return None
        return bicubic_upscale(images, scale, clamp=False)

    for region in plan_regions(0, h, w, region_px):
        by0, bx0, by1, bx1 = halo_box(grid, region)
        result = upscale_region(
            image[by0:by1, bx0:bx1], spec, region, upscale, tiles_per_call=lambda: batch[0]
        )
        assert result.out_hwc.dtype == image.dtype
        ys, xs = region.y0 * scale, region.x0 * scale
        oh, ow = result.out_hwc.shape[:2]
        out[ys : ys + oh, xs : xs + ow] = result.out_hwc
    return out


def _numpy_reference(image, scale, tile, overlap, window="gaussian"):
    """The blend as pipeline.pure.tiling and pipeline.pure.value_range write it, over the
    whole frame."""
    h, w, c = image.shape
    grid = plan_grid(h, w, tile, overlap)
    low, span, bounded = sample_range(image.dtype.name)
    unit = to_unit(image, low, span)
    if bounded:
        np.clip(unit, 0.0, 1.0, out=unit)
    acc = np.zeros((c, h * scale, w * scale), np.float32)
    wsum = np.zeros((h * scale, w * scale), np.float32)
    for y in grid.ys:
        for x in grid.xs:
            lr = torch.from_numpy(unit[y : y + grid.tile_h, x : x + grid.tile_w]).permute(2, 0, 1)
            sr = bicubic_upscale(lr[None], scale, clamp=False)[0].numpy()
            weights = tile_window(grid, y, x, scale, overlap, window, 0)
            accumulate(acc, wsum, sr, weights, (y * scale, x * scale), (0, 0))
    out = from_unit(normalise(acc, wsum), image.dtype.name, low, span, bounded)
    return np.moveaxis(out, 0, -1)


@pytest.mark.unit
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_equals_the_numpy_blend_byte_for_byte(dtype):
    image = _image(70, 90, 3, dtype)
    got = _run(image, 2, 32, 8, region_px=1000)  # one region: the whole frame
    want = _numpy_reference(image, 2, 32, 8)
    assert got.tobytes() == want.tobytes()


@pytest.mark.unit
@pytest.mark.parametrize(
    "h,w,scale,tile,overlap,window",
    [
        (61, 97, 4, 24, 8, "gaussian"),
        (80, 50, 2, 32, 12, "cosine"),
        (30, 22, 2, 64, 16, "gaussian"),  # smaller than one tile
        (150, 20, 2, 32, 12, "gaussian"),  # narrower than a tile on one axis only
        (65, 129, 4, 32, 24, "cosine"),  # large overlap (stride 8)
    ],
)
def test_seam_free_against_whole_image_bicubic(h, w, scale, tile, overlap, window):
    """With bicubic's context (the pixels at a tile edge that differ from a whole-image
    run, tapered off at inner tile edges) as the pipeline gives it."""
    from pipeline.models import MODELS

    image = _image(h, w, 3, "uint8", seed=3)
    context = MODELS["bicubic"].context_px
    got = _run(image, scale, tile, overlap, 16, window, context=context).astype(np.int16)
    want = bicubic_reference(image, scale).astype(np.int16)
    assert np.abs(got - want).max() <= 1


@pytest.mark.unit
def test_regions_and_out_of_memory_back_off_change_no_sample():
    image = _image(75, 83, 3, "uint8", seed=7)
    whole = _run(image, 2, 20, 6, region_px=1000)
    assert _run(image, 2, 20, 6, region_px=16).tobytes() == whole.tobytes()
    assert _run(image, 2, 20, 6, region_px=24, oom_every=2).tobytes() == whole.tobytes()


@pytest.mark.unit
def test_gray_bands_run_one_by_one():
    """Independent bands go through the model as gray images, one per band."""
    image = _image(40, 44, 5, "uint16", seed=2)
    got = _run(image, 2, 16, 4, region_px=1000, colour=False)
    for band in range(5):
        alone = _run(image[:, :, band : band + 1], 2, 16, 4, 1000, colour=False)
        assert got[:, :, band].tobytes() == alone[:, :, 0].tobytes()


@pytest.mark.unit
def test_cached_windows_and_reused_buffers_give_the_same_blend():
    """The worker keeps a job's windows and their region sums (``Windows``) and reuses
    its accumulators: the blend is the one ``blend_region`` makes from scratch, and the
    sum of windows is the plain ``region_weights`` over the numpy windows."""
    from workers.region import Windows, blend_region, region_weights

    image = _image(50, 70, 3, "uint8", seed=4)
    grid = plan_grid(50, 70, 24, 8)
    spec = RegionSpec(grid, 2, Samples(3, 0, True, "uint8", *sample_range("uint8")), 8)
    regions = plan_regions(0, 50, 70, 32)
    windows = Windows(spec)

    def blend(region, **kw):
        y0, x0, y1, x1 = halo_box(grid, region)
        model = lambda im: bicubic_upscale(im, 2, clamp=False)  # noqa: E731
        return blend_region(image[y0:y1, x0:x1], spec, region, model, tiles_per_call=4, **kw)

    for region in [regions[1], regions[0], regions[1]]:  # a cached sum, replaced, redone
        fresh = blend(region)
        dirty = torch.full_like(fresh.acc, 7.0)  # a used buffer: zeroed before summing
        reused = blend(region, acc=dirty, windows=windows)
        assert reused.acc is dirty and torch.equal(reused.acc, fresh.acc)
        assert torch.equal(reused.wsum, fresh.wsum)

        def window(y, x):
            return torch.from_numpy(tile_window(grid, y, x, 2, 8, "gaussian", 0))

        plain = region_weights(region, tiles_for_region(grid, region), 2, window)
        assert torch.equal(plain, fresh.wsum)


@pytest.mark.unit
def test_a_failure_is_located_once_by_the_driver(tmp_path):
    """The worker raises the plain cause; the driver names the region (or the frames of
    an estimate) from the call's address, once."""
    from pipeline.config import JobConfig, ModelConfig
    from pipeline.regions.graph import region_failed
    from pipeline.runner.tasks import EstimateTask, JobRef, RegionTask
    from workers.region_worker import RegionWorker

    worker = RegionWorker(ModelConfig(name="bicubic", scale=2, device="cpu"))
    job = JobRef(str(tmp_path / "gone.zarr"), JobConfig(), 1, 0)
    calls = [
        (worker.upscale, RegionTask(0, 1, 1), "frame 0 region (row 1, col 1)"),
        (worker.estimate, EstimateTask((3, 4)), "degradation estimate of frames 3..4"),
    ]
    for method, task, where in calls:
        with pytest.raises(Exception) as raised:
            method(task, job)
        assert "frame" not in str(raised.value)
        message = str(region_failed("s.zarr", task, 2, raised.value))
        kind = type(raised.value).__name__
        assert message.startswith(f"{where} failed 2 time(s): {kind}: {raised.value}; ")
        assert message.count("frame") == 1
