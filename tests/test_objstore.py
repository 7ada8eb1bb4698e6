"""Inputs, outputs and job stores on object storage, against a real S3 API over HTTP.

moto's server runs in a subprocess on 127.0.0.1 for this module; the pipeline reaches it
through s3fs with the standard AWS_* environment (no mocked client). The CLI test runs
the real command with the local Ray it starts (its workers inherit that environment);
the others run the same stages in-process (``run.runner=local``) to stay fast.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.cli.status import status_command
from pipeline.errors import JobFailed, UserError
from pipeline.job.launch import run_job
from tests import faulty_model as fm
from tests.helpers import main_cli, make_config, run_cli, synth_image
from tests.test_video import assert_video_preserved
from tests.video_fixtures import make_clip

pytestmark = pytest.mark.integration
BUCKET = "sr-test"
SMALL = {"scale": 2, "tile": 32, "overlap": 8, "region_out_px": 128, "chunk_out_px": 64}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with one bucket; AWS_* set for this process and its children."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.1)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=endpoint, use_listings_cache=False)
        fs.mkdir(BUCKET)
        try:
            yield fs
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            s3fs.S3FileSystem.clear_instance_cache()


def keys(fs, prefix: str) -> list[str]:
    return sorted(fs.find(f"{BUCKET}/{prefix}"))


def reference(tmp_path: Path, src: Path) -> np.ndarray:
    """The same job on local files, in-process."""
    out = tmp_path / "ref.tif"
    run_job(str(src), str(out), make_config(run__runner="local", **SMALL), progress=False)
    return tifffile.imread(out)


def test_image_from_s3_to_s3_with_store_on_s3_matches_local_run(s3, tmp_path, caplog):
    """The CLI on the private Ray it starts, with --quiet. The input carries an unparsable
    GDAL_NODATA tag, which tifffile warns about wherever the file is read (the driver and
    the ingest workers): --quiet silences library warnings in the workers too (formerly
    its own CLI run, test_output_metadata.py::test_quiet_silences_library_warnings_in_workers)."""
    src = tmp_path / "in.tif"
    nodata_tag = [(42113, "s", 0, "not-a-number", True)]
    image = synth_image(150, 200)
    tifffile.imwrite(src, image, photometric="rgb", tile=(64, 64), extratags=nodata_tag)
    s3.put_file(str(src), f"{BUCKET}/cli/in.tif")
    run = run_cli(
        f"s3://{BUCKET}/cli/in.tif",
        "-o",
        f"s3://{BUCKET}/cli/out/up.tif",
        "--work-dir",
        f"s3://{BUCKET}/cli/work",
        "--quiet",
        "--actors",
        "2",
        *("--scale", "2", "--tile", "32", "--overlap", "8"),
        *("--set", "store.region_out_px=128", "--set", "store.chunk_out_px=64"),
    )
    assert run.returncode == 0, run.stderr
    assert "GDAL_NODATA" not in run.stderr + run.stdout
    assert f"s3://{BUCKET}/cli/out/up.tif" in run.stdout
    s3.get_file(f"{BUCKET}/cli/out/up.tif", str(tmp_path / "got.tif"))
    with caplog.at_level(logging.WARNING, logger="tifffile"):
        want = reference(tmp_path, src)
    assert "GDAL_NODATA" in caplog.text  # without --quiet, the tag is warned about
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "got.tif"), want)
    assert keys(s3, "cli/out") == [f"{BUCKET}/cli/out/up.tif"]  # no partials left
    assert not keys(s3, "cli/work")  # the store is removed after success
    assert keys(s3, "cli/in.tif") == [f"{BUCKET}/cli/in.tif"]  # input untouched


def test_failed_run_resumes_from_s3_store_and_publishes_zarr_only_when_complete(
    s3, tmp_path, monkeypatch
):
    """A model failing on one region stops the job with the store kept on S3 and no
    output object; the fixed rerun redoes only that region and publishes OME-Zarr."""
    import zarr

    fm.register(monkeypatch)
    image = fm.plant_poison(synth_image(128, 128, seed=5), 96, 96)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image, photometric="rgb")
    s3.put_file(str(src), f"{BUCKET}/resume/in.tif")
    ctl = fm.write_control(tmp_path / "control.json", poison="raise")
    cfg = make_config(
        run__runner="local",
        run__region_retries=0,
        model__name="faulty",
        model__weights=str(ctl),
        **SMALL,
    )
    src_url, out_url = f"s3://{BUCKET}/resume/in.tif", f"s3://{BUCKET}/resume/out.zarr"
    with pytest.raises(JobFailed):
        run_job(src_url, out_url, cfg, progress=False)
    assert not s3.exists(f"{BUCKET}/resume/out.zarr")  # nothing published
    assert not [k for k in keys(s3, "resume") if ".partial-" in k]
    store = zarr.open_group(f"s3://{BUCKET}/resume/out.zarr.job.zarr", mode="r")
    done = np.asarray(store["done"][...])
    assert 0 < done.sum() < done.size  # some regions finished before the failure
    assert f"{BUCKET}/resume/out.zarr.job.zarr/driver.lease" not in keys(s3, "resume")
    # status finds the store beside the output URL and reads its progress from S3.
    code, text = status_command(out_url, None, as_json=True)
    seen = json.loads(text)
    assert (code, seen["state"], seen["store"]) == (0, "failed", f"{out_url}.job.zarr")
    assert (seen["regions_done"], seen["regions_total"]) == (done.sum(), done.size)
    assert "poison" in seen["error"]

    fm.write_control(ctl)  # the fix
    summary = run_job(src_url, out_url, cfg, progress=False)
    assert summary.regions_run == done.size - done.sum()
    assert summary.output == out_url
    ome = zarr.open_group(out_url, mode="r")
    assert ome.attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"
    got = np.moveaxis(np.asarray(ome["0"][...]), 0, -1)
    np.testing.assert_array_equal(got, reference(tmp_path, src))
    assert not s3.exists(f"{BUCKET}/resume/out.zarr.job.zarr")
    assert not [k for k in keys(s3, "resume") if ".partial-" in k]


def test_video_from_s3_to_s3_keeps_frames_and_audio(s3, tmp_path):
    src = make_clip(tmp_path / "clip.mp4", frames=12, gop=4)
    s3.put_file(str(src), f"{BUCKET}/video/clip.mp4")
    cfg = make_config(run__runner="local", scale=2, tile=32, overlap=8)
    out_url = f"s3://{BUCKET}/video/up.mp4"
    run_job(f"s3://{BUCKET}/video/clip.mp4", out_url, cfg, progress=False)
    s3.get_file(f"{BUCKET}/video/up.mp4", str(tmp_path / "up.mp4"))
    assert_video_preserved(src, tmp_path / "up.mp4")
    assert keys(s3, "video") == [f"{BUCKET}/video/clip.mp4", f"{BUCKET}/video/up.mp4"]


def test_file_urls_work_like_paths(tmp_path):
    src = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(synth_image(40, 60)).save(src)
    work = tmp_path / "work"
    work.mkdir()
    cfg = make_config(run__runner="local", store__work_dir=f"file://{work}", **SMALL)
    out = tmp_path / "out.png"
    summary = run_job(f"file://{src}", f"file://{out}", cfg, progress=False)
    assert summary.output == str(out)
    ref = make_config(run__runner="local", **SMALL)
    run_job(str(src), str(tmp_path / "ref.png"), ref, progress=False)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "ref.png")))
    assert not list(work.iterdir())


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["s3://{b}/nope.png", "-o", "{tmp}/o.tif"], "input s3://{b}/nope.png does not exist"),
        (["s3://no-such-bucket/in.png", "-o", "{tmp}/o.tif"], "does not exist"),
        (["{tmp}/in.png", "-o", "s3://no-such-bucket/o.tif"], "bucket no-such-bucket of"),
        (["{tmp}/in.png", "-o", "s3://{b}/exists.png"], "already exists; pass --overwrite"),
        (["foo://x/in.png", "-o", "{tmp}/o.tif"], "unsupported URL scheme 'foo'"),
        (["{tmp}/in.png", "-o", "gs://b/o.tif"], "needs the gcsfs package"),
    ],
)
def test_bad_urls_exit_2_with_one_line(s3, tmp_path, capsys, args, text):
    pytest.importorskip("s3fs")
    if "gs://" in " ".join(args):
        try:
            import gcsfs  # noqa: F401

            pytest.skip("gcsfs is installed")
        except ImportError:
            pass
    from PIL import Image

    from pipeline.cli.main import main

    Image.fromarray(synth_image(20, 20)).save(tmp_path / "in.png")
    s3.pipe_file(f"{BUCKET}/exists.png", b"keep me")
    argv = [a.format(b=BUCKET, tmp=tmp_path) for a in args]
    assert main([*argv, "--quiet", "--set", "run.runner=local"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert text.format(b=BUCKET) in lines[0], err
    assert s3.cat_file(f"{BUCKET}/exists.png") == b"keep me"  # existing output untouched


def test_lease_refuses_a_second_driver_and_takes_over_a_stale_one(s3, monkeypatch):
    from pipeline.store import lock
    from pipeline.store.jobstore import JobStore, Layout

    url = f"s3://{BUCKET}/lease/job.zarr"
    layout = Layout(1, 32, 32, 3, "uint8", 2, 64, 64)
    first = JobStore.create(url, {"x": 1}, layout)
    first.lock()
    lease_key = f"{BUCKET}/lease/job.zarr/driver.lease"
    held = json.loads(s3.cat_file(lease_key))
    mine = lock.DRIVER_TOKEN
    assert held["token"] == mine
    monkeypatch.setattr(lock, "DRIVER_TOKEN", "other-driver")  # as if another process
    with pytest.raises(UserError, match="is in use by pid"):
        JobStore.open(url).lock()
    monkeypatch.setattr(lock, "DRIVER_TOKEN", mine)
    first.unlock()
    assert not s3.exists(lease_key)
    monkeypatch.setattr(lock, "DRIVER_TOKEN", "other-driver")

    stale = {"token": "dead", "owner": "pid 1 on gone", "heartbeat": time.time() - 3600}
    s3.pipe_file(lease_key, json.dumps(stale).encode())
    second = JobStore.open(url)
    second.lock()  # the dead driver's lease is taken over
    assert json.loads(s3.cat_file(lease_key))["token"] == "other-driver"
    second.unlock()


def test_large_upload_is_multipart_and_whole(s3, tmp_path):
    from pipeline.store.outputs import publish_file

    data = os.urandom(11 * 2**20)
    (tmp_path / "big.bin").write_bytes(data)
    publish_file(tmp_path / "big.bin", f"s3://{BUCKET}/big/big.bin", part_bytes=5 * 2**20)
    assert s3.cat_file(f"{BUCKET}/big/big.bin") == data
    assert s3.info(f"{BUCKET}/big/big.bin")["ETag"].strip('"').endswith("-3")  # 3 parts


def test_batch_over_an_s3_glob_publishes_each_item_and_skips_them_on_rerun(s3, tmp_path, ray_local):
    """``batch 's3://.../*.tif' --output-pattern 's3://.../{stem}_x2.tif'``: inputs listed
    from the bucket, outputs uploaded, and a rerun skips the finished items (exit 0)."""
    sources = {}
    for i in range(2):
        src = tmp_path / f"scan{i}.tif"
        tifffile.imwrite(src, synth_image(96, 128, seed=10 + i), photometric="rgb")
        s3.put_file(str(src), f"{BUCKET}/batch/in/scan{i}.tif")
        sources[f"scan{i}"] = src
    s3.pipe(f"{BUCKET}/batch/in/notes.txt", b"not an input")
    report = tmp_path / "report.json"
    args = (
        "batch",
        f"s3://{BUCKET}/batch/in/*",
        "--output-pattern",
        f"s3://{BUCKET}/batch/out/{{stem}}_x2.tif",
        "--report",
        str(report),
        "--quiet",
        *("--scale", "2", "--tile", "32", "--overlap", "8"),
        *("--set", "store.region_out_px=128", "--set", "store.chunk_out_px=64"),
    )
    run = run_cli(*args)
    assert run.returncode == 0, run.stderr
    items = json.loads(report.read_text())["items"]
    assert [(i["input"], i["status"]) for i in items] == [
        (f"s3://{BUCKET}/batch/in/scan{i}.tif", "done") for i in range(2)
    ]
    for stem, src in sources.items():
        s3.get_file(f"{BUCKET}/batch/out/{stem}_x2.tif", str(tmp_path / "got.tif"))
        (tmp_path / stem).mkdir()
        want = reference(tmp_path / stem, src)
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "got.tif"), want)
    assert keys(s3, "batch/out") == [f"{BUCKET}/batch/out/scan{i}_x2.tif" for i in range(2)]

    # The rerun through the CLI's main in this process, on the session's Ray (the first
    # run's private Ray gave its workers the S3 settings; the rerun only skips).
    again = main_cli(*args)
    assert again.returncode == 0, again.stderr
    assert [i["status"] for i in json.loads(report.read_text())["items"]] == ["skipped"] * 2
