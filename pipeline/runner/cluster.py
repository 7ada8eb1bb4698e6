"""Ray runtime: start a private local Ray (or join a cluster) for the life of a job.

Local Ray binds to 127.0.0.1 with the dashboard off and is shut down when the job
ends. When the caller already initialised Ray (tests, notebooks attached to a cluster),
it is reused as is and left running.

The job joins a cluster instead when given an address (``--address``/``run.address``)
or when ``RAY_ADDRESS`` holds one: Ray's job supervisor sets it for the entrypoint of
a submitted job (``run_pipeline.py submit``), so a submitted pipeline runs on the
cluster that runs the job rather than on a private Ray inside it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UserError
from pipeline.runner.quiet import ray_runtime_env
from pipeline.store.urls import forwarded_env

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # pipeline/runner/cluster.py
# Set by Ray's job supervisor for a submitted job's entrypoint: its runtime env, which
# already ships the working directory.
IN_RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


@contextmanager
def ray_runtime(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    from pipeline.runner.stopping import reinstall_after_ray_init, sigterm_handler

    address = join_address(address)
    if not address:
        loopback_only()
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    previous = sigterm_handler()
    if address:
        check_reachable(address)
        # Ship our two packages so workers on other machines can import them (inside a
        # submitted Ray job its working_dir already carries them to every worker), and
        # the object-store endpoint and credentials.
        quiet = ray_runtime_env()
        runtime_env: dict = {**quiet, "env_vars": forwarded_env() | quiet.get("env_vars", {})}
        if IN_RAY_JOB_ENV not in os.environ:
            runtime_env["py_modules"] = [
                str(PROJECT_ROOT / "pipeline"),
                str(PROJECT_ROOT / "workers"),
            ]
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        reaper = None
    else:
        from pipeline.runner.reaper import start_reaper

        reaper = start_reaper()  # kills this local Ray if the driver is killed
        ray.init(
            # "local": always a private Ray. Without it ray.init() joins the most recent
            # cluster on this machine (RAY_ADDRESS or /tmp/ray/ray_current_cluster).
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.ERROR,
            log_to_driver=True,
            runtime_env=ray_runtime_env() or None,
        )
    reinstall_after_ray_init(previous)
    try:
        yield
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.kill()
            reaper.wait()


def loopback_only() -> None:
    """Make a private local Ray listen on 127.0.0.1 only.

    For a new local cluster Ray advertises the machine's routable address, and its
    services listen there or on every interface. With this switch (read when ``ray`` is
    first imported, so before that) Ray uses the loopback address, and every service
    it starts (GCS, raylet, workers, agents) binds to 127.0.0.1."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def join_address(address: str | None) -> str | None:
    """The cluster a job joins: ``address`` when given, else ``$RAY_ADDRESS``; None
    means a private local Ray. An http(s) ``RAY_ADDRESS`` is a dashboard address for
    Ray's job CLI (``ray job submit``), not one a driver can join, so it is ignored."""
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and not env.startswith(("http://", "https://")):
        return env
    return None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds with one line when nothing listens at ``address`` (Ray itself
    retries a dead address for minutes). ``auto`` finds a local head by itself."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(
            f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto "
            "(a dashboard URL http://HOST:8265 is for 'run_pipeline.py submit')"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UserError(
            f"cannot reach the Ray cluster at {address}: {reason} (is its head running, "
            "and is this its GCS port, 6379 by default, or its client port ray://HOST:10001?)"
        ) from None


def cluster_gpus() -> float:
    """GPUs Ray can schedule (0 when Ray is not running: the local runner uses none)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


def cluster_cpus() -> float:
    """CPUs Ray can schedule (this machine's cores when Ray is not running)."""
    import ray

    if not ray.is_initialized():
        return float(os.cpu_count() or 1)
    return float(ray.cluster_resources().get("CPU", 1.0))
