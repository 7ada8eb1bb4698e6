"""The Python API: :func:`upscale` one input, or :func:`upscale_batch` many.

The same semantics as the command line, which is a thin layer over this module: a job
resumes from its store when run again, a store is locked while a job runs it, the
default model is S3Diff when its weights are found (else bicubic), and Ray is started
privately for the call and stopped after it, joined when an address is given (or
``$RAY_ADDRESS``), or reused as it is when the caller already initialised it (a notebook
attached to a cluster). Results come back as objects (``pipeline.results``), failures as
exceptions under :class:`pipeline.errors.Error`, progress as events
(``pipeline.events``) to a callable; nothing here prints, draws a bar or exits.

Heavy modules (the planner, the runner, Ray) are imported inside the functions, so
``import pipeline`` stays cheap.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import UserError
from pipeline.events import Listener, WarningLogged
from pipeline.results import BatchResult, Result
from pipeline.runner.stopping import CancelToken

if TYPE_CHECKING:
    from pipeline.job.batch import BatchItem

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
Config = str | os.PathLike | Mapping[str, Mapping[str, Any]] | None
Overrides = Mapping[str, Any] | Iterable[str] | None


# ------------------------------------------------------------------ public calls
def upscale(
    input: PathLike,  # noqa: A002 - the name users read in the signature
    output: PathLike,
    *,
    model: str | None = None,
    weights: PathLike | None = None,
    scale: int | None = None,
    config: Config = None,
    overrides: Overrides = None,
    overwrite: bool = False,
    progress: Listener | None = None,
    address: str | None = None,
    restart: bool = False,
    cancel: CancelToken | None = None,
) -> Result:
    """Upscale one image or video into ``output``; returns a :class:`Result`.

    ``input``: an image (PNG, JPEG, TIFF/BigTIFF/OME-TIFF), a Zarr array or a video,
    a local path (made absolute: the workers may run in another folder) or an
    object-store URL. ``output``: its format follows the extension
    (``.zarr .tif .png .jpg`` for images, ``.mp4 .mkv .mov`` for videos).

    ``model``: ``"bicubic"``, ``"s3diff"``, ...; None picks S3Diff when its weights are
    found (``weights``, ``$S3DIFF_WEIGHTS``, the caches), else bicubic. ``scale``: the
    upscale factor (default 4). ``config``: a YAML preset path or a mapping of sections
    (``{"tiling": {"tile_px": 256}}``). ``overrides``: ``{"section.key": value}`` or
    ``["section.key=value", ...]``, applied last (like ``--set``). ``address``: a Ray
    cluster to join (``auto``, ``ray://head:10001``); without it a private local Ray
    runs for this call, unless Ray is already initialised in this process (then it is
    used and left running); ``overrides={"run.runner": "local"}`` runs in this process
    without Ray.

    An existing output is refused unless ``overwrite``. Calling again after a failure
    or a stop resumes from the job store; ``restart=True`` discards it first.
    ``progress``: a callable that receives :mod:`pipeline.events` objects. ``cancel``:
    a :class:`CancelToken` another thread may cancel; the call then raises
    :class:`Cancelled` and the store stays resumable.

    Raises :class:`UserError` (bad input or config, before anything is written),
    :class:`JobFailed` (a region failed after its retries), :class:`Terminated` or
    :class:`Cancelled` (stopped; resumable), all under :class:`pipeline.Error`;
    ``KeyboardInterrupt`` passes through (the store is left resumable).
    """
    preset, flags, set_items = job_settings(
        config, overrides, model=model, weights=weights, scale=scale, address=address
    )
    return run_one(
        absolute(input),
        absolute(output),
        preset,
        flags,
        set_items,
        overwrite=overwrite,
        restart=restart,
        progress=progress,
        cancel=cancel,
    )


def upscale_batch(
    items_or_manifest: PathLike | Iterable[Any],
    *,
    output_pattern: str | None = None,
    report: PathLike | None = None,
    model: str | None = None,
    weights: PathLike | None = None,
    scale: int | None = None,
    config: Config = None,
    overrides: Overrides = None,
    overwrite: bool = False,
    progress: Listener | None = None,
    address: str | None = None,
    restart: bool = False,
    cancel: CancelToken | None = None,
) -> BatchResult:
    """Upscale many inputs on one Ray worker pool; returns a :class:`BatchResult`.

    ``items_or_manifest``: a manifest file (YAML/JSON, as for ``run_pipeline.py
    batch``), a directory or a glob pattern (with ``output_pattern``), or a list whose
    entries are ``(input, output)`` pairs, ``(input, output, overrides)`` triples,
    ``{"input": ..., "output": ..., "set": ...}`` mappings, or input paths alone (with
    ``output_pattern``, e.g. ``"out/{stem}_x4.tif"``; ``{stem} {name} {suffix}
    {parent}`` are filled in). Output folders are created.

    Finished outputs are skipped and unfinished items resume, so the same call is safe
    to repeat from a scheduler. One item's failure does not stop the others and does not
    raise: it is in the result (``result.items``, ``result.ok``); call
    ``result.check()`` to raise it. ``report``: a JSON report path, rewritten as items
    finish (None: none). The other arguments are those of :func:`upscale`, applied to
    every item (an item's own overrides come last). Bad options raise
    :class:`UserError` before any item runs. A batch runs on Ray.
    """
    from pipeline.job.batch import BatchItem, read_manifest

    if isinstance(items_or_manifest, (str, os.PathLike)):
        items = read_manifest(os.fspath(items_or_manifest), output_pattern)
    else:
        items = batch_items(items_or_manifest, output_pattern)
    items = [BatchItem(absolute(i.input), absolute(i.output), i.set_items) for i in items]
    preset, flags, set_items = job_settings(
        config, overrides, model=model, weights=weights, scale=scale, address=address
    )
    return run_many(
        items,
        preset,
        flags,
        set_items,
        report=report,
        overwrite=overwrite,
        restart=restart,
        progress=progress,
        cancel=cancel,
    )


# ------------------------------------------------------------- what the CLI calls
def run_one(
    input_path: str,
    output_path: str,
    preset: str | None,
    flags: dict[str, Any],
    set_items: tuple[str, ...],
    *,
    overwrite: bool = False,
    restart: bool = False,
    progress: Listener | None = None,
    cancel: CancelToken | None = None,
) -> Result:
    """One job from the CLI's three layers of settings: a preset file, values of
    dedicated flags (``{"section.key": value}``) and ``--set`` items, in that order."""
    from pipeline.config import load_config
    from pipeline.job.launch import run_job

    load_config(preset, flags, set_items)  # bad options fail first
    flags = default_model(preset, flags, set_items)
    cfg = load_config(preset, flags, set_items)
    _before_ray(cfg)
    with forward_warnings(progress, output_path):
        result = run_job(
            input_path,
            output_path,
            cfg,
            overwrite=overwrite,
            restart=restart,
            progress=progress,
            cancel=cancel,
        )
    return replace(result, weights=weights_location(cfg))


def run_many(
    items: list[BatchItem],
    preset: str | None,
    flags: dict[str, Any],
    set_items: tuple[str, ...],
    *,
    report: PathLike | None = None,
    overwrite: bool = False,
    restart: bool = False,
    progress: Listener | None = None,
    cancel: CancelToken | None = None,
) -> BatchResult:
    """A batch from the CLI's three layers of settings (see :func:`run_one`)."""
    from pipeline.config import load_config
    from pipeline.job.batch import run_batch

    load_config(preset, flags, set_items)  # bad options fail before any item
    flags = default_model(preset, flags, set_items)
    cfg = load_config(preset, flags, set_items)
    _before_ray(cfg)
    with forward_warnings(progress, ""):
        reports = run_batch(
            items,
            preset=preset,
            overrides=flags,
            base_set=set_items,
            overwrite=overwrite,
            restart=restart,
            progress=progress,
            report_path=Path(report) if report is not None else None,
            cancel=cancel,
        )
    return BatchResult(reports, os.fspath(report) if report is not None else None)


# ---------------------------------------------------------------------- settings
def absolute(path: PathLike) -> str:
    """A local path made absolute (a URL as it is): the workers, on an already-running
    Ray or a cluster, do not share this process's working folder."""
    text = os.fspath(path)
    return text if "://" in text else os.path.abspath(text)


def job_settings(
    config: Config, overrides: Overrides, **keywords: Any
) -> tuple[str | None, dict[str, Any], tuple[str, ...]]:
    """The API's arguments as the CLI's layers: a preset path, ``{"section.key":
    value}`` (a config mapping, then the keywords, then mapping overrides) and
    ``section.key=value`` items (list overrides, applied last)."""
    from pipeline.config import FLAGS

    flags: dict[str, Any] = {}
    preset = None
    if isinstance(config, Mapping):
        for section, values in config.items():
            if not isinstance(values, Mapping):
                raise UserError(f"config section {section!r} must be a mapping of keys")
            flags.update({f"{section}.{key}": value for key, value in values.items()})
    elif config is not None:
        preset = os.fspath(config)
    by_name = {flag.removeprefix("--"): key for key, flag in FLAGS.items()}
    for name, value in keywords.items():
        if value is not None:
            flags[by_name[name]] = os.fspath(value) if isinstance(value, os.PathLike) else value
    set_items: tuple[str, ...] = ()
    if isinstance(overrides, Mapping):
        flags.update(overrides)
    elif isinstance(overrides, str):
        set_items = (overrides,)
    elif overrides is not None:
        set_items = tuple(overrides)
    for key in flags:
        if not isinstance(key, str) or "." not in key:
            raise UserError(
                f"overrides are named 'section.key' (e.g. 'tiling.tile_px'), got {key!r}"
            )
    return preset, flags, set_items


def batch_items(entries: Iterable[Any], output_pattern: str | None) -> list[BatchItem]:
    """Batch items from a list (see :func:`upscale_batch`)."""
    from pipeline.job.batch import BatchItem, items_for, override_items

    items: list[BatchItem] = []
    for n, entry in enumerate(entries, 1):
        where = f"batch item {n}"
        if isinstance(entry, BatchItem):
            items.append(entry)
        elif isinstance(entry, (str, os.PathLike)):
            items += items_for([Path(os.fspath(entry))], output_pattern)
        elif isinstance(entry, Mapping):
            unknown = set(entry) - {"input", "output", "set"}
            if unknown or not entry.get("input") or not entry.get("output"):
                raise UserError(f"{where}: needs 'input' and 'output' (and optionally 'set')")
            sets = override_items(entry.get("set"), where)
            items.append(BatchItem(os.fspath(entry["input"]), os.fspath(entry["output"]), sets))
        elif isinstance(entry, (tuple, list)) and len(entry) in (2, 3):
            sets = override_items(entry[2], where) if len(entry) == 3 else ()
            items.append(BatchItem(os.fspath(entry[0]), os.fspath(entry[1]), sets))
        else:
            raise UserError(
                f"{where}: give (input, output), (input, output, overrides), a mapping "
                "with 'input' and 'output', or an input path with output_pattern"
            )
    if not items:
        raise UserError("the batch has no items")
    outputs = [i.output for i in items]
    if len(set(outputs)) != len(outputs):
        raise UserError("several batch items have the same output")
    return items


def default_model(
    preset: str | None, flags: dict[str, Any], set_items: tuple[str, ...] | list[str]
) -> dict[str, Any]:
    """``flags``, plus ``model.name=s3diff`` when no model was chosen and S3Diff's
    weights are given or found (flag, $S3DIFF_WEIGHTS, the caches); says which in one
    line. The lookup runs here, on the driver: with an address the cluster's workers
    must have the weights where this machine finds them."""
    from pipeline.config import chooses_model, load_config

    if chooses_model(preset, flags, list(set_items)):
        return flags
    cfg = load_config(preset, flags, list(set_items))
    found = _find_weights(cfg.model.weights)
    if found or cfg.model.weights:
        where = found or cfg.model.weights
        log.info("model: s3diff (weights: %s; --model bicubic for plain bicubic)", where)
        return {**flags, "model.name": "s3diff"}
    log.info("model: bicubic (for S3Diff: 'run_pipeline.py weights download', or --weights DIR)")
    return flags


def weights_location(cfg: Any) -> str | None:
    """The weights directory a job's model uses, as the driver finds it (None: the
    model needs none)."""
    from pipeline.models import get_spec

    if not get_spec(cfg.model.name).needs_weights:
        return None
    return _find_weights(cfg.model.weights) or cfg.model.weights


def _find_weights(explicit: str | None) -> str | None:
    from pipeline.job.weights import find_weights  # a path lookup, no torch

    return find_weights(explicit)


def _before_ray(cfg: Any) -> None:
    from pipeline.runner.cluster import join_address, loopback_only

    if cfg.run.runner != "local" and not join_address(cfg.run.address):
        loopback_only()  # before anything imports ray


# ---------------------------------------------------------------------- warnings
class _WarningEvents(logging.Handler):
    """Hands the driver's warnings, logged on the calling thread, to a listener."""

    def __init__(self, listener: Listener, output: str) -> None:
        super().__init__(logging.WARNING)
        self.listener, self.output = listener, output
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        try:
            self.listener(WarningLogged(self.output, record.getMessage()))
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


@contextmanager
def forward_warnings(listener: Listener | None, output: str) -> Iterator[None]:
    """While the job runs, its driver's warnings also go to ``listener``."""
    if listener is None:
        yield
        return
    handler = _WarningEvents(listener, output)
    logger = logging.getLogger("pipeline")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
