"""Submit the pipeline's command line to a Ray cluster as a Ray Job, and report on it.

``run_pipeline.py submit [--address URL] [--follow | --no-wait] [--] ARGS...`` sends
``python run_pipeline.py ARGS...`` to the cluster's job server (the dashboard, port
8265) with this project directory as the job's working_dir, prints the job id, then
waits for the job (``--follow`` also streams its logs; ``--no-wait`` returns at once).
ARGS is a single job's command line or ``batch MANIFEST ...``. Exit status: 0 when the
job SUCCEEDED; when it FAILED, the pipeline's own code if it was one of 2, 3, 75, else
3; 75 when it was STOPPED (``job_exit_code``).

On the cluster the entrypoint's ``ray_runtime`` joins the cluster through the
``RAY_ADDRESS`` that Ray's job supervisor sets (pipeline/runner/cluster.py), so regions fan
out over the cluster's GPUs. The cluster's image is assumed to have this project's
dependencies installed (torch for its GPUs, ray, zarr, av, ...): only the code is
shipped, because installing torch per job is slow and the right torch build depends on
the nodes. Paths in ARGS are read on the cluster: use shared or object-store paths.

``ray_job_status`` is the library call behind ``run_pipeline.py status JOB_ID``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.cli.arguments import program_name
from pipeline.errors import UserError
from pipeline.runner.cluster import PROJECT_ROOT

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never shipped: environments, caches, test and bench data, job stores, local outputs.
EXCLUDES = [
    ".venv",
    ".git",
    "tests/data",
    "bench/_data",
    "*.job.zarr",
    "samples",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
]
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 3, "STOPPED": 75}
TERMINAL = set(EXIT_CODES)
OUR_FLAGS = {"--address": True, "--follow": False, "--no-wait": False}  # takes a value?
POLL_S = 1.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("submit"),
        usage="run_pipeline.py submit [--address URL] [--follow | --no-wait] [--] "
        "INPUT -o OUTPUT [pipeline options] | batch MANIFEST [batch options]",
        description="Run the pipeline's command line on a Ray cluster as a Ray Job "
        "(this directory is shipped as its working_dir; the cluster must have the "
        "dependencies installed). Prints the job id. Exit status: 0 SUCCEEDED; the "
        "pipeline's own 2, 3 or 75 when it failed with one, else 3 FAILED; 75 STOPPED.",
    )
    p.add_argument(
        "--address",
        default=None,
        help="the cluster's job server (dashboard) URL; default $RAY_ADDRESS when it is "
        f"a URL, else {DEFAULT_ADDRESS}",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    mode.add_argument(
        "--no-wait", action="store_true", help="return after submitting (prints the job id)"
    )
    return p


def split_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(submit's own options, the pipeline's command line): everything after ``--``,
    or from the first argument that is not one of submit's options."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    i = 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in ("-h", "--help"):
            i += 1
        elif name in OUR_FLAGS:
            i += 2 if OUR_FLAGS[name] and "=" not in argv[i] else 1
        else:
            break
    return argv[:i], argv[i:]


def dashboard_address(address: str | None) -> str:
    """The job server URL: the given one, else an http(s) ``$RAY_ADDRESS``, else the
    local default. A bare HOST:PORT is taken as http."""
    if not address:
        env = os.environ.get("RAY_ADDRESS", "").strip()
        address = env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


def _client(address: str):
    """A job submission client, or one line saying why the job server is unreachable."""
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UserError(f"--address {address!r}: expected the dashboard URL http://HOST:8265")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5.0).close()
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray job server at {address}: {exc.strerror or exc} (is the "
            "cluster's dashboard running, e.g. 'ray start --head --include-dashboard=true', "
            "and is this its port, 8265 by default?)"
        ) from None
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # ray without its [default] extra: no job SDK deps
        raise UserError(f"the Ray job client needs ray[default]: {exc}") from None
    logging.getLogger("ray").setLevel(logging.WARNING)  # its upload steps log at INFO
    try:
        return JobSubmissionClient(address, headers=_auth_headers())
    except (ConnectionError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the Ray job server at {address} refused the client: {first}") from None


def _auth_headers() -> dict[str, str]:
    """The Ray token (``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) as a bearer header: Ray 2.5x clusters require it once a token
    exists, as ``ray.init`` assumes too, unless ``RAY_AUTH_MODE=disabled``."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def check_pipeline_args(args: list[str]) -> None:
    """Parse the pipeline command line here first, so a typo fails before any upload.
    Paths are not checked: they are read on the cluster."""
    if not args:
        raise UserError("submit: no pipeline command line given (run_pipeline.py submit -h)")
    if args[0] in ("sample", "weights"):
        return
    from pipeline.cli.arguments import build_batch_parser, build_parser

    if args[0] == "batch":  # a whole batch as one Ray job (scheduled remastering)
        parser, args = build_batch_parser(), args[1:]
        parser.prog = "run_pipeline.py submit ... -- batch"
    else:
        parser = build_parser()
        parser.prog = "run_pipeline.py submit ... --"
    parser.parse_args(args)  # argparse prints the problem and exits 2


def submit(client: Any, address: str, pipeline_args: list[str]) -> str:
    """Submit ``python run_pipeline.py ARGS`` with this directory as working_dir;
    returns the job id."""
    entrypoint = shlex.join(["python", "run_pipeline.py", *pipeline_args])
    runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES}
    try:
        return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the Ray job server at {address} did not take the job: {first}") from None


def follow_logs(client: Any, job_id: str) -> None:
    """Stream the job's stdout/stderr to our stdout until the job ends."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())


def wait_for(client: Any, job_id: str) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED; returns that status."""
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(POLL_S)


def ray_job_status(
    address: str | None, job_id: str, log_lines: int = 20, client: Any = None
) -> dict[str, Any]:
    """A Ray job's state for ``run_pipeline.py status``: ``job_id``, ``status``
    (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), ``entrypoint``, ``message``,
    ``start_time``/``end_time`` (seconds since the epoch, None until known),
    ``driver_exit_code`` (None until the entrypoint exits), ``exit_code`` (what
    ``submit`` would exit with; None while the job runs) and ``logs`` (its last
    ``log_lines`` lines). Raises UserError for an unreachable server or unknown job."""
    url = dashboard_address(address)
    client = client or _client(url)
    try:
        info = client.get_job_info(job_id)
        logs = client.get_job_logs(job_id)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"no Ray job {job_id!r} at {url}: {first}") from None
    status = str(info.status.value)
    driver_exit_code = getattr(info, "driver_exit_code", None)

    def seconds(ms: int | None) -> float | None:
        return ms / 1000.0 if ms else None

    return {
        "job_id": job_id,
        "status": status,
        "entrypoint": info.entrypoint,
        "message": info.message,
        "start_time": seconds(info.start_time),
        "end_time": seconds(info.end_time),
        "driver_exit_code": driver_exit_code,
        "exit_code": job_exit_code(status, driver_exit_code) if status in TERMINAL else None,
        "logs": logs.splitlines()[-log_lines:] if log_lines > 0 else [],
    }


def main(argv: Sequence[str]) -> int:
    ours, pipeline_args = split_args(argv)
    args = build_parser().parse_args(ours)
    check_pipeline_args(pipeline_args)
    address = dashboard_address(args.address)
    client = _client(address)
    job_id = submit(client, address, pipeline_args)
    print(f"submitted Ray job {job_id} to {address}", flush=True)
    if args.no_wait:
        print(f"follow it with: ray job logs --follow --address {address} {job_id}")
        return 0
    try:
        if args.follow:
            follow_logs(client, job_id)
        status = wait_for(client, job_id)
    except KeyboardInterrupt:
        print(
            f"stopped waiting; job {job_id} keeps running on the cluster "
            f"(ray job stop --address {address} {job_id} ends it)",
            file=sys.stderr,
        )
        return 130
    state = ray_job_status(address, job_id, log_lines=0 if args.follow else 10, client=client)
    if status != "SUCCEEDED":
        if not args.follow:  # show the job's last lines, where its error is
            for line in state["logs"]:
                print(line, file=sys.stderr)
        code = state["driver_exit_code"]
        why = f"entrypoint exit code {code}" if code is not None else state["message"]
        first = (str(why).strip().splitlines() or [""])[0]
        print(f"error: Ray job {job_id} {status}: {first}", file=sys.stderr)
    else:
        print(f"Ray job {job_id} SUCCEEDED")
    return job_exit_code(status, state["driver_exit_code"])


def job_exit_code(status: str, driver_exit_code: int | None) -> int:
    """The pipeline's own exit code when the job failed with one of ours (2 bad input,
    3 failed regions/items, 75 terminated), so cron and CronJobs can tell them apart;
    otherwise 0 / 3 / 75 for SUCCEEDED / FAILED / STOPPED."""
    if status == "FAILED" and driver_exit_code in (2, 3, 75):
        return int(driver_exit_code)
    return EXIT_CODES[status]
