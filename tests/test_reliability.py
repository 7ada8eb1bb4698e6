"""Reliability (issue 5): real faults on real processes, real Ray, real files.

Crashes: the CLI is SIGKILLed during ingest, upscaling, encoding and publishing, then the
same command is run again; the result must equal a clean run's pixels (decoded frames).
Worker failures: a worker killed mid-region, a worker that crashes or raises on poison
input, out-of-memory; injected with ``tests/faulty_model.py``. Bad input: each refused
with one line, nothing touched. Security: loopback-only Ray, store names that cannot
escape, no shell. docs/RELIABILITY.md maps every fault to the test that shows it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import tifffile
from PIL import Image

from pipeline.errors import JobFailed, UserError
from pipeline.job.launch import run_job
from pipeline.store.jobstore import JobStore, default_store_url
from tests import faulty_model as fm
from tests.helpers import (
    LOCAL_RUNNER,
    ROOT,
    assert_one_line_error,
    bicubic_reference,
    launch_cli,
    main_cli,
    make_config,
    synth_image,
)

WEIGHTS = ROOT / "tests" / "data" / "golden" / "weights"

# The small job of the in-process fault tests: 128x128 LR, x2, 2x2 regions of 64 LR px.
# The poison pixel at (96, 96) lies only in tiles of region (1, 1).
SMALL = {"scale": 2, "tile": 32, "overlap": 8, "region_out_px": 128, "chunk_out_px": 64}
POISON_AT = (96, 96)
POISON_REGION = "frame 0 region (row 1, col 1)"


# ----------------------------------------------------------------------------- helpers
def kill_when(proc: subprocess.Popen, point: Callable[[str], bool], inspect=None) -> str:
    """SIGKILL the CLI (``launch_cli``; stderr is read line by line, tqdm's \\r splits
    too) at the first stderr line where ``point`` holds, then wait until its local Ray
    is gone (the reaper's job), so a rerun cannot meet a stale worker."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if point(line):
            # Freeze the driver first: listing its process family takes long enough on a
            # loaded machine for a nearly finished job to publish in the meantime.
            os.kill(proc.pid, signal.SIGSTOP)
            family = psutil.Process(proc.pid).children(recursive=True)
            if inspect is not None:
                inspect(family)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
            _, alive = psutil.wait_procs(family, timeout=30)
            assert not alive, [p.pid for p in alive]
            return line
    proc.wait()
    pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point:\n{''.join(seen)}")


def bar_at_least(count: int) -> Callable[[str], bool]:
    def point(line: str) -> bool:
        m = re.search(r"upscale:.*\|\s*(\d+)/(\d+) ", line)
        return bool(m) and count <= int(m.group(1)) < int(m.group(2))

    return point


def check_flags(store_url: str, clean_thwc: np.ndarray) -> tuple[int, int]:
    """Every region flagged done holds exactly the clean run's pixels (data first, then
    the flag). Returns (regions done, regions)."""
    store = JobStore.open(store_url, mode="r")
    done, r = store.done_mask(), store.layout.region_out_px
    out = store.array("output")
    for f, row, col in np.argwhere(done):
        got = out[f, row * r : (row + 1) * r, col * r : (col + 1) * r]
        want = clean_thwc[f, row * r : (row + 1) * r, col * r : (col + 1) * r]
        np.testing.assert_array_equal(got, want, err_msg=f"region {(f, row, col)}")
    return int(done.sum()), done.size


def no_finished_looking_output(out: Path) -> None:
    assert not out.exists()
    for p in out.parent.iterdir():  # temporaries are hidden and say so
        mine = p.name.startswith((out.stem, f".{out.stem}")) and p.name.endswith(out.suffix)
        if mine and p.name != out.name:
            assert p.name.startswith(f".{out.stem}.partial-"), p


def poisoned_image(path: Path) -> Path:
    image = fm.plant_poison(synth_image(128, 128, seed=5), *POISON_AT)
    tifffile.imwrite(path, image, photometric="rgb")
    return path


@pytest.fixture(scope="module")
def clean_small(tmp_path_factory) -> np.ndarray:
    """The poisoned test image upscaled by plain bicubic: what every fault run must give."""
    d = tmp_path_factory.mktemp("clean_small")
    src = poisoned_image(d / "in.tif")
    cfg = make_config(run__runner="local", **SMALL)  # the runners agree: tests/test_video.py
    run_job(str(src), str(d / "clean.tif"), cfg, progress=False)
    return tifffile.imread(d / "clean.tif")


@pytest.fixture
def faulty(tmp_path, monkeypatch):
    """Registers the faulty models; returns (write_control, log path)."""
    fm.register(monkeypatch)
    log = tmp_path / "calls.log"
    ctl = tmp_path / "control.json"

    def control(**kw) -> Path:
        return fm.write_control(ctl, log=str(log), **kw)

    return control, log


def faulty_cfg(ctl: Path, **extra):
    return make_config(actors=2, model__name="faulty", model__weights=str(ctl), **(SMALL | extra))


# ------------------------------------------------------------------- crashes and resume
@pytest.mark.integration
def test_killed_cli_resumes_image_at_ingest_upscale_and_publish(tmp_path):
    """SIGKILL during ingest, then upscaling, then publishing; the fourth run finishes
    with pixels identical to a clean run. After each kill: no finished-looking output,
    only complete regions flagged; local Ray listened on loopback only, no dashboard UI."""
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, synth_image(1024, 1024, seed=4), photometric="rgb", tile=(128, 128))
    geometry = {"scale": 2, "tile": 64, "overlap": 8, "region_out_px": 256, "chunk_out_px": 128}
    clean_cfg = make_config(run__runner="local", **geometry)
    run_job(str(src), str(tmp_path / "clean.tif"), clean_cfg, progress=False)
    clean = tifffile.imread(tmp_path / "clean.tif")[None]
    out = tmp_path / "out.tif"
    args = [src, "-o", out, "--scale", "2", "--tile", "64", "--overlap", "8"]
    args += ["--set", "store.region_out_px=256", "--set", "store.chunk_out_px=128"]
    url = default_store_url(str(src), str(out), None)

    # Ingest and publish are killed on the in-process runner, upscaling on Ray.
    local = [*args, *LOCAL_RUNNER]
    kill_when(launch_cli(*local, stdout=subprocess.DEVNULL), lambda ln: ln.startswith("ingest:"))
    no_finished_looking_output(out)
    assert not JobStore.open(url, mode="r").ingested_mask().any()
    assert check_flags(url, clean)[0] == 0

    listening: list = []

    def sockets(family: list[psutil.Process]) -> None:
        for proc in family:
            cmd = " ".join(proc.cmdline())
            if "dashboard/dashboard.py" in cmd:  # Ray's internal head: no web UI
                assert "--disable-frontend" in cmd
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.append((conn.laddr.ip, conn.laddr.port, cmd[:60]))

    kill_when(launch_cli(*args, stdout=subprocess.DEVNULL), bar_at_least(16), inspect=sockets)
    no_finished_looking_output(out)
    done, total = check_flags(url, clean)
    assert 0 < done < total
    assert listening, "no Ray service found"
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    assert all(ip in loopback for ip, _, _ in listening), listening
    assert all(port != 8265 for _, port, _ in listening)

    def partial_written(line: str) -> bool:
        if not line.startswith("publish:"):
            return False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if list(tmp_path.glob(".out.partial-*.tif")):
                return True
            time.sleep(0.005)
        return False

    kill_when(launch_cli(*local, stdout=subprocess.DEVNULL), partial_written)
    no_finished_looking_output(out)
    assert list(tmp_path.glob(".out.partial-*.tif"))  # an unfinished, hidden temporary
    assert check_flags(url, clean) == (total, total)

    final = main_cli(*local)
    assert final.returncode == 0, final.stderr
    assert f"0/{total} regions run, {total} resumed" in final.stdout
    np.testing.assert_array_equal(tifffile.imread(out), clean[0])
    assert not list(tmp_path.glob(".out.partial-*"))  # the stale temporary was swept
    assert not Path(url).exists()


def _segment_files(store_url: str) -> dict[str, tuple[str, int]]:
    import hashlib

    folder = Path(store_url) / "segments"
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.glob("*.seg"))
    }


@pytest.mark.integration
def test_killed_cli_resumes_video_at_ingest_and_encoding(tmp_path):
    """SIGKILL while segments decode, then while the encoder is mid-stream; the rerun's
    decoded frames equal a clean run's exactly, and it redoes only the segments not yet
    encoded (the encoded ones' files are never rewritten); ``status`` counts them in
    between. The codec is FFV1: libx264's bitstream
    is not reproducible even between two clean runs on a loaded machine (measured, see
    docs/RELIABILITY.md), so only a deterministic encoder can show exact resume; the
    stored frames it encodes are compared bit for bit whatever the codec."""
    from tests.video_fixtures import decode_frames, make_clip

    src = make_clip(tmp_path / "clip.mp4", frames=96, gop=12)
    clean = tmp_path / "clean.mkv"
    cfg = make_config(
        scale=2,
        tile=32,
        overlap=8,
        keep=True,
        video__segment_frames=12,
        video__codec="ffv1",
        video__keep_frames=True,  # the clean run's frames, to compare flagged regions with
        run__runner="local",  # the runners agree: tests/test_video.py
    )
    run_job(str(src), str(clean), cfg, progress=False)
    clean_url = default_store_url(str(src), str(clean), None)
    clean_stored = JobStore.open(clean_url, mode="r").array("output")[...]
    out = tmp_path / "out.mkv"
    args = [src, "-o", out, "--scale", "2", "--tile", "32", "--overlap", "8", "--keep-store"]
    args += ["--set", "video.segment_frames=12", "--codec", "ffv1"]
    url = default_store_url(str(src), str(out), None)

    # Decoding is killed on the in-process runner, encoding on Ray.
    local = [*args, *LOCAL_RUNNER]
    kill_when(launch_cli(*local, stdout=subprocess.DEVNULL), lambda ln: ln.startswith("ingest:"))
    no_finished_looking_output(out)
    assert not JobStore.open(url, mode="r").ingested_mask().all()

    def encoding(line: str) -> bool:
        m = re.search(r"encoded (\d+)/(\d+) segments", line)
        # In the first half, so that plenty of work is left when the kill lands, and
        # after two segments, so that some are left alone by the rerun.
        return bool(m) and 2 <= int(m.group(1)) <= int(m.group(2)) // 2

    kill_when(launch_cli(*args, stdout=subprocess.DEVNULL), encoding)
    no_finished_looking_output(out)
    assert 0 < check_flags(url, clean_stored)[0]
    store = JobStore.open(url, mode="r")
    flagged = {f"{i:06d}.seg" for i in np.flatnonzero(store.encoded_mask())}
    done_before = len(flagged)
    before = _segment_files(url)
    assert 2 <= done_before < 8 and len(before) >= done_before
    status = main_cli("status", out)
    assert status.returncode == 0, status.stderr
    assert f"segments encoded: {done_before}/8" in status.stdout, status.stdout
    assert "scratch in use:" in status.stdout

    final = main_cli(*local)  # killed on Ray, resumed in-process
    assert final.returncode == 0, final.stderr
    assert "resumed from the store" in final.stdout
    assert f"{8 - done_before}/8 segments encoded" in final.stdout, final.stdout
    after = _segment_files(url)
    for name in flagged:  # finished before the kill: never rewritten
        assert after[name] == before[name], name
    got, want = decode_frames(out), decode_frames(clean)
    assert len(got) == len(want) == 96
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"frame {i}")
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.integration
def test_killed_cli_resumes_tiny_s3diff(tmp_path):
    """The tiny S3Diff (degradation estimate, then regions): SIGKILL after the first
    regions are flagged; the rerun gives the clean run's pixels."""
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, synth_image(40, 64, seed=3), photometric="rgb")
    base = {"model__name": "s3diff", "model__weights": str(WEIGHTS), "model__batch_size": 2}
    # In-process like the CLI runs below: S3Diff's float sums depend on torch's thread
    # count, which differs between a Ray worker and this process (1 LSB in a few pixels).
    geometry = {"region_out_px": 128, "chunk_out_px": 64, "run__runner": "local"}
    cfg = make_config(scale=4, tile=32, overlap=24, actors=1, **geometry, **base)
    run_job(str(src), str(tmp_path / "clean.tif"), cfg, progress=False)
    clean = tifffile.imread(tmp_path / "clean.tif")[None]
    out = tmp_path / "out.tif"
    args = [src, "-o", out, "--model", "s3diff", "--scale", "4", "--tile", "32"]
    args += ["--overlap", "24", "--batch-size", "2", "--set", f"model.weights={WEIGHTS}"]
    args += ["--set", "store.region_out_px=128", "--set", "store.chunk_out_px=64"]
    args += ["--actors", "1", *LOCAL_RUNNER]  # S3Diff on Ray: tests/test_s3diff_pipeline.py
    kill_when(launch_cli(*args, stdout=subprocess.DEVNULL), bar_at_least(1))
    no_finished_looking_output(out)
    url = default_store_url(str(src), str(out), None)
    done, total = check_flags(url, clean)
    assert 0 < done < total == 4
    final = main_cli(*args)
    assert final.returncode == 0, final.stderr
    np.testing.assert_array_equal(tifffile.imread(out), clean[0])


@pytest.mark.integration
def test_half_written_shard_without_flag_is_redone(tmp_path, clean_small):
    """A region whose shard was cut short (a store without atomic writes, a full disk)
    has no flag, so the rerun writes it again, whole; flagged regions are not redone."""
    src = poisoned_image(tmp_path / "in.tif")
    out = tmp_path / "out.tif"
    cfg = make_config(run__runner="local", keep=True, **SMALL)  # the store, not Ray
    run_job(str(src), str(out), cfg, progress=False)
    out.unlink()
    url = default_store_url(str(src), str(out), None)
    store = JobStore.open(url)
    shard = Path(url) / "output" / "c" / "0" / "1" / "0" / "0"
    assert shard.is_file()
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    store.array("done")[0, 1, 0] = 0
    summary = run_job(str(src), str(out), cfg, progress=False)
    assert summary.regions_run == 1
    np.testing.assert_array_equal(tifffile.imread(out), clean_small)


# ------------------------------------------------------------------------ worker faults
@pytest.mark.integration
def test_worker_killed_mid_region_is_retried_on_a_new_actor(
    tmp_path, ray_local, clean_small, faulty
):
    """The worker on region (1, 1) is SIGKILLed from outside while it computes (a
    preempted or OOM-killed process); the region runs again on a replacement actor."""
    control, log = faulty
    ctl = control(poison="hang", once=True)
    pid_file = ctl.with_name(ctl.name + ".pid")
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not pid_file.exists():
            time.sleep(0.02)
        if pid_file.exists():
            time.sleep(0.2)
            killed.append(int(pid_file.read_text()))
            os.kill(killed[0], signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    src = poisoned_image(tmp_path / "in.tif")
    summary = run_job(str(src), str(tmp_path / "out.tif"), faulty_cfg(ctl), progress=False)
    thread.join(timeout=5)
    assert killed, "the worker never reached the poisoned region"
    assert summary.regions_run == summary.regions_total == 4
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), clean_small)
    calls = fm.read_log(log)
    assert [c for c in calls if c[0] == killed[0] and c[3] == "hang"]
    assert [c for c in calls if c[2] and c[3] == "ok" and c[0] != killed[0]]


@pytest.mark.integration
def test_worker_crashing_on_poison_is_blamed_alone_then_fixed_rerun_resumes(
    tmp_path, ray_local, clean_small, faulty
):
    """A worker process that dies on every try of one region (a segfault on poison
    input): that region, and only it, uses up its retries, even though each crash also
    fails the region queued behind it on the same actor. The store is kept; once the
    model is fixed the same job resumes and gives the clean pixels."""
    control, log = faulty
    ctl = control(poison="exit")
    src, out = poisoned_image(tmp_path / "in.tif"), tmp_path / "out.tif"
    cfg = faulty_cfg(ctl, run__region_retries=2, run__in_flight_per_actor=2)
    with pytest.raises(JobFailed) as err:
        run_job(str(src), str(out), cfg, progress=False)
    message = str(err.value)
    assert message.startswith(f"{POISON_REGION} failed 3 time(s): its worker process died")
    assert "is kept, so a fixed rerun resumes" in message and "\n" not in message
    assert len([c for c in fm.read_log(log) if c[3] == "exit"]) == 3
    assert not out.exists()
    url = default_store_url(str(src), str(out), None)
    done, total = check_flags(url, clean_small[None])
    assert not JobStore.open(url, mode="r").done_mask()[0, 1, 1]

    control()  # the fix
    summary = run_job(str(src), str(out), cfg, progress=False)
    assert summary.regions_run == total - done
    np.testing.assert_array_equal(tifffile.imread(out), clean_small)


@pytest.mark.integration
def test_raising_model_stops_cli_with_exit_3_naming_region(
    tmp_path, ray_local, clean_small, faulty
):
    """A model that raises on poison input: retried ``run.region_retries`` times, then
    the CLI exits 3 with one line naming the frame and region; the fixed rerun resumes."""
    control, log = faulty
    ctl = control(poison="raise")
    src, out = poisoned_image(tmp_path / "in.tif"), tmp_path / "out.tif"
    argv = [str(src), "-o", str(out), "--quiet", "--scale", "2", "--tile", "32"]
    argv += ["--overlap", "8", "--actors", "2", "--set", "model.name=faulty"]
    argv += ["--set", f"model.weights={ctl}", "--set", "store.region_out_px=128"]
    argv += ["--set", "run.region_retries=1"]
    failed = main_cli(*argv)  # main in this process (its --quiet undone after)
    assert failed.returncode == 3
    err = failed.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith(
        f"error: {POISON_REGION} failed 2 time(s): ValueError: poison pixel in the input"
    ), err
    assert "Traceback" not in err
    assert len([c for c in fm.read_log(log) if c[3] == "raise"]) == 2  # bounded: 1 + 1 retry
    control()  # the fix
    fixed = main_cli(*argv)
    assert fixed.returncode == 0
    assert "resumed from the store" in fixed.stdout
    np.testing.assert_array_equal(tifffile.imread(out), clean_small)


@pytest.mark.integration
def test_out_of_memory_halves_the_batch_and_drops_no_tile(tmp_path, ray_local, clean_small, faulty):
    """Injected OOM above one tile per call: each worker goes 4 -> 2 -> 1 and redoes the
    batch; every tile is computed once at batch 1 and the output is exact."""
    from pipeline.pure.tiling import plan_grid, plan_regions, tiles_for_region

    control, log = faulty
    ctl = control(oom_above=1)
    src = poisoned_image(tmp_path / "in.tif")
    run_job(str(src), str(tmp_path / "out.tif"), faulty_cfg(ctl, batch_size=4), progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), clean_small)
    calls = fm.read_log(log)
    for pid in {c[0] for c in calls}:
        mine = [(tiles, outcome) for p, tiles, _, outcome in calls if p == pid]
        assert mine[:2] == [(4, "oom"), (2, "oom")], mine
        assert all(t == 1 and o == "ok" for t, o in mine[2:]), mine
    grid = plan_grid(128, 128, 32, 8)
    expected = sum(len(tiles_for_region(grid, r)) for r in plan_regions(0, 128, 128, 64))
    assert sum(t for _, t, _, o in calls if o == "ok") == expected


@pytest.mark.integration
def test_out_of_memory_in_tiny_s3diff_video_keeps_every_frame(tmp_path, ray_local, faulty):
    """The tiny S3Diff with an injected OOM, on a video: the workers shrink their batch,
    no frame is lost, and the frames match a run without faults (the model's batch size
    changes float rounding only)."""
    from tests.video_fixtures import make_clip, probe_summary

    control, log = faulty
    ctl = control(inner="s3diff", inner_weights=str(WEIGHTS), oom_above=1)
    src = make_clip(tmp_path / "clip.mp4", width=48, height=32, frames=3, gop=2)
    geometry = {"scale": 4, "tile": 32, "overlap": 24}  # 3 tiles a frame
    video = {"keep": True, "actors": 1, "model__batch_size": 4, "video__codec": "ffv1"}
    clean_cfg = make_config(model__name="s3diff", model__weights=str(WEIGHTS), **geometry, **video)
    oom_cfg = make_config(model__name="faulty_s3diff", model__weights=str(ctl), **geometry, **video)
    stored = []
    for name, cfg in (("clean.mkv", clean_cfg), ("oom.mkv", oom_cfg)):
        run_job(str(src), str(tmp_path / name), cfg, progress=False)
        url = default_store_url(str(src), str(tmp_path / name), None)
        stored.append(JobStore.open(url, mode="r").array("output")[...].astype(int))
        summary = probe_summary(tmp_path / name)
        assert [s["packets"] for s in summary["streams"] if s["type"] == "video"] == [3]
    assert np.abs(stored[0] - stored[1]).max() <= 1
    calls = fm.read_log(log)
    assert {t for _, t, _, o in calls if o == "oom"} == {3, 2}
    assert {t for _, t, _, o in calls if o == "ok"} == {1}


@pytest.mark.integration
def test_out_of_memory_in_the_estimate_halves_the_crop_batch(tmp_path, faulty):
    """The degradation estimate backs off like the upscale: an injected OOM on two
    crops halves the crop batch, and the stored scores match a run without faults."""
    control, log = faulty
    ctl = control(inner="s3diff", inner_weights=str(WEIGHTS), estimate_oom_above=1)
    src = tmp_path / "in.png"
    Image.fromarray(synth_image(130, 256)).save(src)  # two 128 px estimate crops
    geometry = {"scale": 2, "tile": 128, "overlap": 32, "keep": True}
    common = {"run__runner": "local", **geometry}
    clean_cfg = make_config(model__name="s3diff", model__weights=str(WEIGHTS), **common)
    oom_cfg = make_config(model__name="faulty_s3diff", model__weights=str(ctl), **common)
    scores = []
    for name, cfg in (("clean.png", clean_cfg), ("oom.png", oom_cfg)):
        run_job(str(src), str(tmp_path / name), cfg, progress=False)
        url = default_store_url(str(src), str(tmp_path / name), None)
        scores.append(JobStore.open(url, mode="r").array("degradation")[...])
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-6)
    calls = [(t, o) for _, t, _, o in fm.read_log(log) if o.startswith("estimate")]
    assert calls == [(2, "estimate_oom"), (1, "estimate_ok"), (1, "estimate_ok")], calls


@pytest.mark.integration
def test_out_of_memory_with_one_tile_fails_the_region_with_advice(tmp_path, ray_local, faulty):
    control, _ = faulty
    ctl = control(oom_above=0)
    src = tmp_path / "in.png"
    Image.fromarray(synth_image(40, 40)).save(src)
    cfg = faulty_cfg(ctl, run__region_retries=1)
    with pytest.raises(JobFailed) as err:
        run_job(str(src), str(tmp_path / "o.png"), cfg, progress=False)
    message = str(err.value)
    assert message.startswith("frame 0 region (row 0, col 0) failed 2 time(s): ")
    assert "out of memory with a single 32x32 px tile" in message
    assert "lower --tile and rerun with --restart" in message


# ----------------------------------------------------------------------------- bad input
def _truncated_mp4(tmp_path: Path) -> Path:
    """moov first (faststart), then the media data cut at 60%."""
    import av

    from tests.video_fixtures import make_clip

    src = make_clip(tmp_path / "whole.mp4", frames=24)
    fast = tmp_path / "fast.mp4"
    with av.open(str(src)) as inp, av.open(str(fast), "w", options={"movflags": "faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream_index]
                o.mux(packet)
    data = fast.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    src.unlink()
    fast.unlink()
    return cut


def _audio_only_mp4(path: Path) -> Path:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 48000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


def _png_claiming(path: Path, width: int, height: int) -> Path:
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )
    return path


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.mark.integration
def test_bad_inputs_exit_with_one_line_and_touch_nothing(tmp_path, ray_local):
    """Each bad input against an existing output with --overwrite: non-zero exit, one
    line naming the problem, no traceback, every file as it was, no store left. The CLI's
    ``main`` in this process (the damaged video on the session's Ray, where its decode
    fails in a task); the subprocess and its traceback-free line: tests/test_cli.py."""
    from tests.test_s3diff_weights import _Payload, edit_checkpoint, make_weights_dir

    bad = tmp_path / "bad"
    bad.mkdir()
    whole = synth_image(64, 64)
    tifffile.imwrite(bad / "good.tif", whole, photometric="rgb")
    data = (bad / "good.tif").read_bytes()
    (bad / "truncated.tif").write_bytes(data[: len(data) // 2])
    (bad / "garbage.tif").write_bytes(data[:8] + bytes(range(256)) * 4)
    # float32 is upscaled in its own range now; float64 is still refused.
    tifffile.imwrite(bad / "float.tif", np.zeros((8, 8, 3), np.float64), photometric="rgb")
    _png_claiming(bad / "zero_width.png", 0, 10)
    _truncated_mp4(bad)
    _audio_only_mp4(bad / "no_video.mp4")
    missing_key = make_weights_dir(tmp_path / "w_missing")
    key = "down_blocks.0.attentions.0.proj_in.lora_B.default.weight"
    edit_checkpoint(missing_key, lambda raw: raw["state_dict_unet"].pop(key))
    pickled = make_weights_dir(tmp_path / "w_pickle")
    import torch

    marker = tmp_path / "payload_ran"
    torch.save({"w": _Payload(marker)}, pickled / "s3diff.pkl")

    out = tmp_path / "out"
    out.mkdir()
    (out / "existing.tif").write_bytes(b"precious tif")
    (out / "existing.mp4").write_bytes(b"precious mp4")
    local = ["--set", "run.runner=local"]  # same checks, without Ray
    s3diff = ["--model", "s3diff", "--scale", "4", *local]
    cases = [
        (bad / "truncated.tif", "existing.tif", local, "could not be decoded: corrupted strip"),
        (bad / "garbage.tif", "existing.tif", local, "is not a readable TIFF"),
        (bad / "float.tif", "existing.tif", local, "float64 samples; supported are"),
        (bad / "zero_width.png", "existing.tif", local, "could not be read as PNG"),
        (bad / "truncated.mp4", "existing.mp4", [], "did not decode (is the file damaged"),
        (bad / "no_video.mp4", "existing.mp4", local, "has no video stream"),
        (
            bad / "good.tif",
            "existing.tif",
            [*s3diff, "--set", f"model.weights={missing_key}"],
            "S3Diff weights are not usable",
        ),
        (
            bad / "good.tif",
            "existing.tif",
            [*s3diff, "--set", f"model.weights={pickled}"],
            "refusing to load",
        ),
    ]
    before_bad, before_out = _snapshot(bad), _snapshot(out)
    for src, target, extra, text in cases:
        result = main_cli(src, "-o", out / target, "--overwrite", *extra)
        assert_one_line_error(result, 2, text)
        assert _snapshot(bad) == before_bad, src
        assert _snapshot(out) == before_out, src  # no store, no temporary, output intact
    assert not marker.exists()  # the pickle's code never ran


@pytest.mark.integration
def test_foreign_directory_at_the_store_path_is_left_alone(tmp_path):
    """A directory of the user's where the job store would go is never reused, cleared
    or deleted, not even with --restart."""
    src = tmp_path / "in.png"
    Image.fromarray(synth_image(20, 20)).save(src)
    theirs = tmp_path / "o.tif.job.zarr"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    for extra in ([], ["--restart"]):
        result = main_cli(src, "-o", tmp_path / "o.tif", "--set", "run.runner=local", *extra)
        assert_one_line_error(result, 2, "exists and is not a job store; it is left alone")
    assert (theirs / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "o.tif.job.zarr"]


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_directory_is_refused(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(synth_image(20, 20)).save(src)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_one_line_error(main_cli(src, "-o", locked / "o.tif"), 2, "is not writable")
    finally:
        locked.chmod(0o755)


@pytest.mark.integration
def test_one_pixel_image_is_valid_input(tmp_path):
    """A 1x1 image is not an error: it is upscaled exactly (one tile of its own size)."""
    src = tmp_path / "dot.png"
    Image.fromarray(np.array([[[10, 200, 90]]], np.uint8)).save(src)
    run_job(str(src), str(tmp_path / "o.png"), make_config(scale=4, run__runner="local"))
    got = np.asarray(Image.open(tmp_path / "o.png"))
    np.testing.assert_array_equal(got, bicubic_reference(np.asarray(Image.open(src)), 4))


# ------------------------------------------------------------------------------ security
@pytest.mark.unit
def test_store_names_cannot_escape_the_given_directories(tmp_path):
    work = tmp_path / "jobs"
    for name in ("../../etc/x.tif", "we?ird#name%2F.tif", "..tif", ".hidden.tif", "a b.tif"):
        out = tmp_path / "outs" / name
        local = Path(default_store_url("in.png", str(out), str(work)))
        assert local.parent == work.resolve(), name
        url = default_store_url("in.png", str(out), "s3://bucket/jobs/")
        rest = url.removeprefix("s3://bucket/jobs/")
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.job\.zarr", rest), url
        beside = Path(default_store_url("in.png", str(out), None))
        assert beside.parent == out.parent.resolve()
    with pytest.raises(UserError, match="cannot tell the output format"):
        run_job("in.png", str(tmp_path / ".."), make_config(run__runner="local"))


@pytest.mark.unit
def test_no_shell_commands_anywhere():
    """No shell is ever given a string: subprocesses take argument lists only."""
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|commands\.")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("pipeline", "workers")
        for path in (ROOT / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders
