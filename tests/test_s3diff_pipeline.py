"""S3Diff through the whole job: real local Ray, real Zarr store, the official-format
tiny golden weights loaded by the same code users run."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pipeline.errors import UserError
from pipeline.job.launch import run_job
from pipeline.store.jobstore import JobStore, default_store_url
from tests.helpers import main_cli, make_config, synth_image

pytestmark = pytest.mark.integration
WEIGHTS = Path(__file__).parent / "data" / "golden" / "weights"


def s3diff_cfg(**extra):
    base = {"model__name": "s3diff", "model__weights": str(WEIGHTS), "model__batch_size": 2}
    extra.setdefault("tile", 48)
    extra.setdefault("overlap", 24)
    return make_config(scale=4, **(base | extra))


@pytest.fixture(scope="module")
def upscaler():
    from pipeline.config import load_config
    from workers.s3diff.upscaler import S3DiffUpscaler

    torch.set_num_threads(2)
    cfg = load_config(set_items=["model.name=s3diff", f"model.weights={WEIGHTS}"])
    return S3DiffUpscaler(cfg.model)


def test_small_image_is_exactly_the_whole_image_result(tmp_path, upscaler):
    """In-process: the subject is the single-tile geometry (S3Diff on Ray: below)."""
    image = synth_image(40, 52, seed=1)
    src = tmp_path / "small.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "out.png"
    cfg = s3diff_cfg(tile=128, overlap=32, keep=True, run__runner="local")
    run_job(str(src), str(out), cfg, progress=False)
    got = np.asarray(Image.open(out))
    lr = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    scores = upscaler.estimate_degradation(lr)  # one crop: the whole (small) image
    store = JobStore.open(default_store_url(str(src), str(out), None))
    np.testing.assert_allclose(store.array("degradation")[0], scores.numpy(), atol=1e-6)
    want = upscaler.upscale(lr, scores)[0].permute(1, 2, 0).numpy()
    want = np.rint(np.clip(want, 0, 1) * 255).astype(np.uint8)
    assert got.shape == (160, 208, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_tiled_s3diff_is_independent_of_regions_and_actors(tmp_path, ray_local):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, synth_image(70, 90, seed=2), photometric="rgb")
    outs = []
    for region, actors in [(128, 2), (2048, 1)]:
        out = tmp_path / f"o{region}.tif"
        cfg = s3diff_cfg(region_out_px=region, chunk_out_px=64, actors=actors)
        run_job(str(src), str(out), cfg, progress=False)
        outs.append(tifffile.imread(out))
    assert outs[0].shape == (280, 360, 3) and outs[0].std() > 5
    np.testing.assert_array_equal(outs[0], outs[1])


def test_fixed_degradation_scores_are_used(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(synth_image(30, 30)).save(src)
    out = tmp_path / "o.png"
    cfg = s3diff_cfg(keep=True, run__runner="local", model__degradation='"0.25,0.75"')
    run_job(str(src), str(out), cfg, progress=False)
    store = JobStore.open(default_store_url(str(src), str(out), None))
    np.testing.assert_allclose(store.array("degradation")[0], [0.25, 0.75])


def test_missing_weights_fail_before_any_work(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(synth_image(30, 30)).save(src)
    broken = tmp_path / "weights"
    broken.mkdir()
    cfg = s3diff_cfg(run__runner="local", model__weights=str(broken))
    with pytest.raises(UserError, match="S3Diff weights are not usable: .*sd-turbo"):
        run_job(str(src), str(tmp_path / "o.png"), cfg, progress=False)
    assert not (tmp_path / "o.png.job.zarr").exists()


def test_s3diff_video_through_the_cli(tmp_path, ray_local):
    from tests.video_fixtures import make_clip, probe_summary

    src = make_clip(tmp_path / "clip.mp4", width=48, height=32, frames=6, gop=3)
    out = tmp_path / "x4.mp4"
    # The CLI's main in this process, on the session's Ray (two actors beat the
    # in-process runner here).
    run = main_cli(
        src,
        "-o",
        out,
        "--model",
        "s3diff",
        "--scale",
        "4",
        "--tile",
        "32",
        "--overlap",
        "24",
        "--set",
        f"model.weights={WEIGHTS}",
        "--set",
        "model.degradation_window=1",
        "--set",
        "video.segment_frames=3",
    )
    assert run.returncode == 0, run.stderr
    video = [s for s in probe_summary(out)["streams"] if s["type"] == "video"][0]
    assert (video["packets"], video["width"], video["height"]) == (6, 192, 128)


def test_weights_subcommand(tmp_path):
    ok = main_cli("weights", "check", WEIGHTS)
    assert ok.returncode == 0 and "usable" in ok.stdout, ok.stderr
    import shutil

    copy = tmp_path / "w"
    shutil.copytree(WEIGHTS, copy)
    converted = main_cli("weights", "convert", copy)
    assert converted.returncode == 0, converted.stderr
    assert (copy / "s3diff.safetensors").is_file() and (copy / "de_net.safetensors").is_file()
    (copy / "s3diff.pkl").unlink()
    (copy / "de_net.pth").unlink()
    assert main_cli("weights", "check", copy).returncode == 0  # the safetensors copies suffice
    (copy / "s3diff.safetensors").unlink()
    bad = main_cli("weights", "check", copy)
    assert bad.returncode == 2 and "s3diff" in bad.stdout and "zhangap/S3Diff" in bad.stdout
