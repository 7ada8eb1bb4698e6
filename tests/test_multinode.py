"""A real multi-node Ray cluster on this machine: a head with the CPUs and no GPU, two
worker nodes with one logical GPU each and no CPU. Jobs join it by address against a
store under tmp_path (shared, being one machine); the region workers must land on both
GPU nodes, the CPU stages on the head, and the output must equal a single-process run.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.job.launch import run_job
from tests.helpers import LOCAL_RAY, make_config, run_cli, synth_image
from tests.video_fixtures import decode_frames, make_clip

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster():
    """(cluster, ids of the two GPU nodes). The session's local Ray, if another module
    started it, is shut down for these tests and started again afterwards, so the
    modules may run in any order."""
    import ray
    from ray.cluster_utils import Cluster

    restore = ray.is_initialized()
    if restore:
        ray.shutdown()
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False},
    )
    try:
        # One CPU each: CPU stages (video decode and encode) may run there too.
        gpu_nodes = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        c.wait_for_nodes()
        yield c, {node.node_id for node in gpu_nodes}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        if restore:
            ray.init(**LOCAL_RAY)


def placement_nodes(caplog) -> dict[str, list[int]]:
    """The driver's placement report: node id -> the worker slots that ran there."""
    reports = [r.nodes for r in caplog.records if hasattr(r, "nodes")]
    assert len(reports) == 1, caplog.text
    return reports[0]


def test_image_job_spreads_over_gpu_nodes_and_matches_single_process(
    tmp_path: Path, cluster, caplog
):
    c, gpu_nodes = cluster
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, synth_image(230, 301, seed=3), photometric="rgb", tile=(64, 64))
    common = {"scale": 2, "tile": 64, "overlap": 16, "region_out_px": 128, "chunk_out_px": 64}
    caplog.set_level(logging.INFO, logger="pipeline.runner.placement")

    out = tmp_path / "cluster.tif"
    summary = run_job(str(src), str(out), make_config(**common, run__address=c.address))
    assert summary.regions_run == summary.regions_total == 20
    nodes = placement_nodes(caplog)
    assert set(nodes) == gpu_nodes  # one worker on each GPU node, none on the head
    assert sorted(len(slots) for slots in nodes.values()) == [1, 1]

    ref = tmp_path / "single.tif"
    run_job(str(src), str(ref), make_config(**common, run__runner="local"), progress=False)
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(ref))


def test_video_job_spreads_over_gpu_nodes_and_matches_single_process(
    tmp_path: Path, cluster, caplog
):
    c, gpu_nodes = cluster
    src = make_clip(tmp_path / "clip.mkv", frames=24, rate=Fraction(24))
    # FFV1 is lossless and bit-reproducible, so the files compare frame for frame. Three
    # segments (one per GOP of 8), three encoders of one thread: they spread over nodes.
    common = {"scale": 2, "tile": 32, "overlap": 8, "video__segment_frames": 4}
    common |= {"video__codec": "ffv1", "video__encoders": 3, "video__encoder_threads": 1}
    caplog.set_level(logging.INFO, logger="pipeline.runner.placement")
    caplog.set_level(logging.INFO, logger="pipeline.video.graph")

    out = tmp_path / "cluster.mkv"
    summary = run_job(str(src), str(out), make_config(**common, run__address=c.address))
    assert summary.frames == summary.regions_run == 24
    assert summary.segments_run == summary.segments_total == 3
    assert set(placement_nodes(caplog)) == gpu_nodes
    encode_nodes = [r.encode_nodes for r in caplog.records if hasattr(r, "encode_nodes")]
    assert len(encode_nodes) == 1 and len(encode_nodes[0]) >= 2, caplog.text
    assert sorted(u for units in encode_nodes[0].values() for u in units) == list(range(3))

    ref = tmp_path / "single.mkv"
    run_job(str(src), str(ref), make_config(**common, run__runner="local"), progress=False)
    got, want = decode_frames(out), decode_frames(ref)
    assert len(got) == len(want) == 24
    for x, y in zip(got, want, strict=True):
        np.testing.assert_array_equal(x, y)


def test_unreachable_address_is_one_line(tmp_path: Path):
    """Nothing listens on port 1: refused in seconds, not after Ray's minutes of retries."""
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(synth_image(40, 50)).save(src)
    proc = run_cli(src, "-o", tmp_path / "o.png", "--address", "127.0.0.1:1", timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot reach the Ray cluster at 127.0.0.1:1"), lines
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.png").exists()
