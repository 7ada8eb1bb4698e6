"""``run_pipeline.py submit`` against a real Ray head with its job server (dashboard),
started by the test on 127.0.0.1 and free ports: the job runs the real CLI on the
cluster, its logs are followed, and its status and exit code come back."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from pipeline.errors import UserError
from tests.helpers import run_cli, synth_image

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ours(temp_dir: str, head: psutil.Process | None) -> list[psutil.Process]:
    """The head's process tree, and anything else running out of its temp dir."""
    found: dict[int, psutil.Process] = {}
    if head is not None:
        try:
            found[head.pid] = head
            found.update({p.pid: p for p in head.children(recursive=True)})
        except psutil.Error:
            pass
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in proc.info["cmdline"] or []):
            found[proc.pid] = proc
    return list(found.values())


def _stop(temp_dir: str, head: psutil.Process) -> list[psutil.Process]:
    """Terminate the head's processes (only ours, by pid), then kill what is left."""
    procs = _ours(temp_dir, head)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive + _ours(temp_dir, None):
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    return [p for p in _ours(temp_dir, None) if p.is_running()] + alive


@pytest.fixture(scope="module")
def job_server():
    """A Ray head (2 CPUs, 1 logical GPU) with its dashboard on 127.0.0.1; yields the
    job server URL. ``--block`` keeps ``ray start`` as the parent of every process it
    starts; teardown ends that tree by pid (never ``ray stop``, which would stop every
    Ray on the machine) and checks that nothing of it is left."""
    temp_dir = tempfile.mkdtemp(prefix="rsub", dir="/tmp")  # short: Ray's socket paths
    dashboard = free_port()
    cmd = [
        str(RAY),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        "--num-cpus=2",
        "--num-gpus=1",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    # The job's entrypoint runs "python": this venv's, as a cluster image's would have
    # the project's dependencies.
    path = os.pathsep.join([str(RAY.parent), os.environ.get("PATH", "")])
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PATH=path)
    log = open(Path(temp_dir) / "ray_start.log", "w")
    popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    head = psutil.Process(popen.pid)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 60
        while not _job_api_up(url):
            if popen.poll() is not None or time.monotonic() > deadline:
                log.flush()
                text = (Path(temp_dir) / "ray_start.log").read_text()[-3000:]
                pytest.fail(f"the Ray head's job server did not come up:\n{text}")
            time.sleep(0.5)
        yield url
    finally:
        left = _stop(temp_dir, head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes left behind: {[p.pid for p in left]}"


def _job_api_up(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # up, and wants the token (Ray 2.5x token auth)
    except OSError:
        return False


@pytest.mark.integration
def test_submit_follow_runs_the_job_on_the_cluster(tmp_path: Path, job_server: str):
    from pipeline.cli.submit import ray_job_status

    src, out = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(synth_image(60, 80)).save(src)
    proc = run_cli(
        "submit", "--address", job_server, "--follow", "--",
        str(src), "-o", str(out), "--scale", "2", "--tile", "32", "--overlap", "8",
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("submitted Ray job raysubmit_"), proc.stdout
    job_id = first.split()[3]
    assert "done in" in proc.stdout  # the pipeline's summary line, from the job's logs
    assert "joining Ray cluster at" in proc.stdout  # through RAY_ADDRESS, no private Ray
    assert np.asarray(Image.open(out)).shape == (120, 160, 3)

    state = ray_job_status(job_server, job_id)
    assert state["status"] == "SUCCEEDED" and state["exit_code"] == 0
    assert state["entrypoint"].startswith("python run_pipeline.py ")
    assert state["start_time"] <= state["end_time"]
    assert any("done in" in line for line in state["logs"])
    with pytest.raises(UserError, match="no Ray job 'raysubmit_nosuchjob'"):
        ray_job_status(job_server, "raysubmit_nosuchjob")


@pytest.mark.integration
def test_submit_bad_input_fails_with_its_error_line(tmp_path: Path, job_server: str):
    missing = tmp_path / "missing.png"
    proc = run_cli(
        "submit", "--address", job_server, str(missing), "-o", str(tmp_path / "o.png"), timeout=240
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr  # the pipeline's own: bad input
    assert proc.stdout.startswith("submitted Ray job raysubmit_")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert any(str(missing) in ln for ln in errors), proc.stderr  # the pipeline's own line
    assert "FAILED: entrypoint exit code 2" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr


@pytest.mark.integration
def test_submit_to_nothing_is_one_line(tmp_path: Path):
    nowhere = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("submit", "--address", nowhere, "in.png", "-o", "o.png", timeout=240)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: cannot reach the Ray job server")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.unit
def test_submit_checks_the_command_line_before_uploading():
    """Single jobs and batches are parsed here first: a typo exits 2 before any upload."""
    from pipeline.cli.submit import check_pipeline_args

    check_pipeline_args(["in.png", "-o", "out.tif", "--scale", "2"])
    check_pipeline_args(["batch", "list.yaml", "--work-dir", "s3://b/work", "--quiet"])
    for bad in (["in.png", "-o", "out.tif", "--scael", "2"], ["batch", "list.yaml", "--nope"]):
        with pytest.raises(SystemExit) as exc:
            check_pipeline_args(bad)
        assert exc.value.code == 2
    with pytest.raises(UserError, match="no pipeline command line"):
        check_pipeline_args([])


@pytest.mark.unit
def test_submit_exit_code_is_the_pipelines_own():
    from pipeline.cli.submit import job_exit_code

    assert job_exit_code("SUCCEEDED", 0) == 0
    assert [job_exit_code("FAILED", c) for c in (2, 3, 75)] == [2, 3, 75]
    assert job_exit_code("FAILED", 1) == 3  # a crash: failed
    assert job_exit_code("FAILED", None) == 3  # never started (bad runtime env)
    assert job_exit_code("STOPPED", None) == 75
