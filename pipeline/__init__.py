"""Distributed super-resolution of videos and gigapixel images, from Python.

Upscale one input::

    import pipeline

    result = pipeline.upscale("scan.tif", "scan_x4.tif", model="bicubic", scale=4)
    print(result.line())            # the CLI's summary line
    result.regions_run, result.mp_per_s, result.output

or many (a manifest file, a directory or glob, or a list)::

    batch = pipeline.upscale_batch(
        [("a.png", "out/a.tif"), ("b.mp4", "out/b.mkv")], scale=2, report="report.json"
    )
    batch.check()                   # raises unless every item is done or skipped

Running the same call again resumes from the job store (a directory beside the
output); a private local Ray runs for the call, or an already-initialised Ray (a
notebook attached to a cluster) is used as it is; ``address=`` joins a cluster.

Errors are exceptions under :class:`Error`, one kind per exit code of the CLI:
:class:`UserError` (bad input or config; nothing written), :class:`JobFailed` (a region
failed after its retries), :class:`Interrupted` and its kinds :class:`Terminated`
(SIGTERM) and :class:`Cancelled` (a :class:`CancelToken`), after which the same call
resumes. ``str(error)`` is the one line the CLI prints.

Progress: ``progress=callable`` receives events (:class:`StageStarted`,
:class:`UnitsDone` with rate and ETA, :class:`SegmentsEncoded`, :class:`WarningLogged`,
and in a batch :class:`ItemFinished`); without it the library only logs through
:mod:`logging` (logger ``pipeline``). Cancel from another thread with a
:class:`CancelToken` passed as ``cancel=``. See docs/API.md.

Nothing in this package imports torch, diffusers or peft at module import, and this
module imports only small modules: the planner, the runner and Ray load when a job
runs. Pixels are handled by Ray tasks and actors (``workers/``).
"""

from pipeline.api import upscale, upscale_batch
from pipeline.errors import Cancelled, Error, Interrupted, JobFailed, Terminated, UserError
from pipeline.events import (
    Event,
    ItemFinished,
    SegmentsEncoded,
    StageStarted,
    UnitsDone,
    WarningLogged,
)
from pipeline.results import BatchResult, ItemResult, Result
from pipeline.runner.stopping import CancelToken

__all__ = [
    "upscale",
    "upscale_batch",
    "Result",
    "BatchResult",
    "ItemResult",
    "CancelToken",
    "Error",
    "UserError",
    "JobFailed",
    "Interrupted",
    "Terminated",
    "Cancelled",
    "Event",
    "StageStarted",
    "UnitsDone",
    "SegmentsEncoded",
    "WarningLogged",
    "ItemFinished",
]
