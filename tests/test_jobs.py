"""Job-level invariants on real local Ray and real Zarr stores: region-partition
invariance, resume without redoing work, refusing foreign stores, the store lock."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.errors import UserError
from pipeline.job.launch import run_job
from pipeline.store.jobstore import JobStore, default_store_url
from tests.helpers import make_config, synth_image

pytestmark = pytest.mark.integration


@pytest.fixture
def tif_input(tmp_path: Path) -> Path:
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, synth_image(230, 301, seed=7), photometric="rgb", tile=(64, 64))
    return path


def test_region_partition_invariance(tmp_path: Path, tif_input: Path, ray_local):
    """Same job, different region sizes and actor counts: byte-identical output."""
    outputs = []
    for region, actors in [(128, 1), (256, 2), (2048, 2), (192, 2)]:
        out = tmp_path / f"out_{region}_{actors}.tif"
        cfg = make_config(
            scale=2, tile=64, overlap=16, region_out_px=region, chunk_out_px=64, actors=actors
        )
        summary = run_job(str(tif_input), str(out), cfg, progress=False)
        assert summary.regions_total == len(range(0, 460, region)) * len(range(0, 602, region))
        outputs.append(tifffile.imread(out))
    for other in outputs[1:]:
        np.testing.assert_array_equal(outputs[0], other)


def test_resume_completes_only_missing_regions(tmp_path: Path, tif_input: Path):
    """In-process: the subject is the store's flags (resume on Ray after a real kill:
    tests/test_reliability.py)."""
    cfg = make_config(
        scale=2,
        tile=64,
        overlap=16,
        region_out_px=128,
        chunk_out_px=64,
        keep=True,
        run__runner="local",
    )
    out = tmp_path / "resumed.tif"
    first = run_job(str(tif_input), str(out), cfg, progress=False)
    assert first.regions_run == first.regions_total == 20
    expected = tifffile.imread(out)  # the clean run's output
    # Simulate a crash after some regions: drop the output and three done flags, and
    # scribble over those regions. Also scribble over one region that stays done: a
    # resume that redid finished work would overwrite it.
    out.unlink()
    store = JobStore.open(default_store_url(str(tif_input), str(out), None))
    output, done = store.array("output"), store.array("done")
    for row, col in [(0, 0), (1, 3), (3, 4)]:
        done[0, row, col] = 0
        output[0, row * 128 : (row + 1) * 128, col * 128 : (col + 1) * 128, :] = 7
    output[0, 256:384, 0:128, :] = 9  # region (2, 0), still flagged done
    second = run_job(str(tif_input), str(out), cfg, progress=False)
    assert second.regions_run == 3
    result = tifffile.imread(out)
    assert (result[256:384, 0:128] == 9).all()
    result[256:384, 0:128] = expected[256:384, 0:128]
    np.testing.assert_array_equal(result, expected)


def test_store_of_another_job_is_refused_then_restart(tmp_path: Path, tif_input: Path):
    out = tmp_path / "out.png"
    run_job(str(tif_input), str(out), make_config(keep=True, run__runner="local"), progress=False)
    out.unlink()
    other = make_config(scale=3, keep=True, run__runner="local")
    with pytest.raises(UserError, match=r"different job \(differs in: .*model.scale"):
        run_job(str(tif_input), str(out), other, progress=False)
    summary = run_job(str(tif_input), str(out), other, restart=True, progress=False)
    assert summary.regions_run == summary.regions_total
    assert (
        tifffile.imread(tif_input).shape[0] * 3
        == np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out)).shape[0]
    )


def test_second_driver_on_same_store_is_refused(tmp_path: Path, tif_input: Path):
    from pipeline.job.launch import plan_job
    from pipeline.store.jobstore import open_for_job

    cfg = make_config(run__runner="local")
    plan = plan_job(str(tif_input), str(tmp_path / "o.tif"), cfg, overwrite=False)
    first = open_for_job(plan.store_url, plan.spec, plan.layout, restart=False)
    try:
        with pytest.raises(UserError, match="in use by pid"):
            run_job(str(tif_input), str(tmp_path / "o.tif"), cfg, progress=False)
        with pytest.raises(UserError, match="in use by pid"):
            run_job(str(tif_input), str(tmp_path / "o.tif"), cfg, restart=True, progress=False)
    finally:
        first.unlock()
    run_job(str(tif_input), str(tmp_path / "o.tif"), cfg, progress=False)
    assert not Path(plan.store_url).exists()  # removed after success without keep
