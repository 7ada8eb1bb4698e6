"""Ray runtime: start a private local Ray (or join a cluster) for the life of a job.

Local Ray binds to 127.0.0.1 with the dashboard off and is shut down when the job
ends. When the caller already initialised Ray (tests, notebooks), it is reused as is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.storage import forwarded_env

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def ray_runtime(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        # Ship our two packages so workers on other machines can import them.
        runtime_env = {
            "py_modules": [str(PROJECT_ROOT / "pipeline"), str(PROJECT_ROOT / "workers")],
            "env_vars": forwarded_env(),  # object-store endpoint and credentials
        }
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        reaper = None
    else:
        from pipeline.reaper import start_reaper

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
        )
    from pipeline.stopping import reinstall_after_ray_init

    reinstall_after_ray_init()
    try:
        yield
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.kill()
            reaper.wait()


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
