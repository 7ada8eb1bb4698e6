"""``--quiet`` for the libraries too: their warnings (tifffile's GDAL_NODATA parsing,
Pillow, zarr, Python ``warnings``) are silenced on the driver and, through a Ray
worker setup hook, in every worker, where they would otherwise reach the terminal
through Ray's log forwarding. Our own warnings and all errors still show.
"""

from __future__ import annotations

import logging
import os
import warnings

QUIET_ENV = "SR_PIPELINE_QUIET"
WORKER_HOOK = "pipeline.runner.quiet.quiet_worker"
LIBRARY_LOGGERS = ("tifffile", "PIL", "zarr", "numcodecs", "imagecodecs", "fsspec", "py.warnings")


def is_quiet() -> bool:
    return os.environ.get(QUIET_ENV) == "1"


def silence_libraries() -> None:
    """Library log records below ERROR and Python warnings are dropped."""
    logging.captureWarnings(True)
    warnings.simplefilter("ignore")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def set_quiet() -> None:
    """Driver side: silence here, and mark the environment for the workers."""
    os.environ[QUIET_ENV] = "1"
    silence_libraries()


def quiet_worker() -> None:
    """Ray ``worker_process_setup_hook``: runs in each worker before any task."""
    if is_quiet():
        silence_libraries()


def ray_runtime_env() -> dict:
    """What ``ray.init``'s runtime env needs so workers start quiet (empty if not)."""
    if not is_quiet():
        return {}
    return {"worker_process_setup_hook": WORKER_HOOK, "env_vars": {QUIET_ENV: "1"}}
