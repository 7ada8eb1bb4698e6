"""Many inputs in one run: ``run_pipeline.py batch MANIFEST``.

Items are planned up front on the driver (a bad item fails alone, with its one-line
reason), then run ``run.active_jobs`` at a time in driver threads against one shared
region pool per model, so models load once per actor and the regions of several items
interleave (the GPUs stay busy while an item ingests, publishes or encodes). Finished
outputs are skipped and unfinished items resume from their stores, so the same command
is safe to repeat from cron. A JSON report is rewritten as items finish; the exit code
is 0 only when every item is done or skipped.

A manifest is a YAML/JSON list of ``{input, output, set}`` (``set``: overrides as
``["section.key=value", ...]`` or a mapping), or a mapping with ``items`` and optional
``set`` applied to every item; relative paths are relative to the manifest. A
directory or a glob pattern takes ``--output-pattern`` with ``{stem}``, ``{name}``,
``{suffix}`` and ``{parent}`` placeholders.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.config import load_config
from pipeline.errors import Cancelled, Interrupted, JobFailed, UserError, cause
from pipeline.events import ItemFinished, JobEvents, Listener
from pipeline.formats import BATCH_INPUTS
from pipeline.results import ItemResult, exit_code, format_table
from pipeline.runner import stopping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchItem:
    input: str
    output: str
    set_items: tuple[str, ...] = ()


ItemReport = ItemResult  # one line of the report (pipeline.results)
__all__ = ["BatchItem", "ItemReport", "exit_code", "format_table", "read_manifest", "run_batch"]


# ----------------------------------------------------------------------- manifests
def override_items(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        return tuple(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UserError(f"{where}: 'set' must be a list of 'section.key=value' or a mapping")


def _from_file(path: Path) -> list[BatchItem]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML too
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"cannot read manifest {path}: {first}") from None
    common: tuple[str, ...] = ()
    if isinstance(data, dict):
        common = override_items(data.get("set"), str(path))
        data = data.get("items")
    if not isinstance(data, list) or not data:
        raise UserError(
            f"manifest {path} must be a non-empty list of {{input, output}} entries "
            "(or a mapping with 'items')"
        )
    base = path.parent
    items = []
    for i, entry in enumerate(data):
        where = f"manifest {path} item {i + 1}"
        if not isinstance(entry, dict) or not entry.get("input") or not entry.get("output"):
            raise UserError(f"{where}: needs 'input' and 'output'")
        unknown = set(entry) - {"input", "output", "set"}
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        items.append(
            BatchItem(
                _resolve(base, str(entry["input"])),
                _resolve(base, str(entry["output"])),
                common + override_items(entry.get("set"), where),
            )
        )
    return items


def _resolve(base: Path, path: str) -> str:
    if "://" in path or Path(path).is_absolute():
        return path
    return str(base / path)


def _remote_inputs(source: str) -> list[Any]:
    """An object-store prefix (``s3://bucket/scans/``) or glob (``.../*.tif``)."""
    from pipeline.store.urls import ObjectPath, filesystem

    fs, path = filesystem(source)
    if glob.has_magic(path):
        found = fs.glob(path)
    else:
        found = [f for f in fs.ls(path, detail=False) if f.rstrip("/") != path.rstrip("/")]
    paths = [ObjectPath(fs.unstrip_protocol(f)) for f in found]
    return sorted((p for p in paths if p.suffix.lower() in BATCH_INPUTS), key=str)


def _from_pattern(source: str, output_pattern: str | None) -> list[BatchItem]:
    from pipeline.store.urls import is_remote

    if is_remote(source):
        paths = _remote_inputs(source)
    elif Path(source).is_dir() and not source.endswith(".zarr"):
        paths = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in BATCH_INPUTS)
    else:
        paths = sorted(Path(p) for p in glob.glob(source))
    if not paths:
        raise UserError(f"no inputs match {source}")
    return items_for(paths, output_pattern)


def items_for(paths: list[Any], output_pattern: str | None) -> list[BatchItem]:
    """One item per input path, its output named by ``output_pattern``."""
    if not output_pattern:
        raise UserError(
            "a directory or glob needs --output-pattern, e.g. 'out/{stem}_x4.tif' "
            "({stem} {name} {suffix} {parent} are filled in)"
        )
    items = []
    for p in paths:
        try:
            out = output_pattern.format(
                stem=p.stem, name=p.name, suffix=p.suffix, parent=str(p.parent)
            )
        except (KeyError, IndexError) as exc:
            raise UserError(f"--output-pattern has an unknown placeholder {exc}") from None
        items.append(BatchItem(str(p), out))
    outputs = [i.output for i in items]
    if len(set(outputs)) != len(outputs):
        raise UserError("--output-pattern gives several inputs the same output; add {stem}")
    return items


def read_manifest(source: str, output_pattern: str | None = None) -> list[BatchItem]:
    """Items from a YAML/JSON manifest, a directory, or a glob pattern."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
        return _from_file(path)
    if path.is_dir() or any(c in source for c in "*?["):
        return _from_pattern(source, output_pattern)
    raise UserError(f"{source} is not a manifest (.yaml .yml .json), a directory or a glob")


def default_report_path(source: str) -> Path:
    path = Path(source)
    if path.is_file():
        return path.with_name(path.stem + ".report.json")
    return Path("batch-report.json")


# ------------------------------------------------------------------------ running
class _Report:
    """The report, rewritten atomically whenever an item changes state."""

    def __init__(self, path: Path | None, reports: list[ItemReport]) -> None:
        self.path, self.reports = path, reports
        self.started = time.time()
        self._lock = threading.Lock()

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            counts: dict[str, int] = {}
            for r in self.reports:
                counts[r.status] = counts.get(r.status, 0) + 1
            doc = {
                "started_at": self.started,
                "updated_at": time.time(),
                "counts": counts,
                "items": [asdict(r) for r in self.reports],
            }
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, self.path)


def _make_parent(output: str) -> None:
    """A batch creates its outputs' missing folders (``out/{stem}_x4.tif``), as batch
    tools do; a single run refuses a missing folder instead (a typo stays visible)."""
    from pipeline.store.urls import is_remote

    if is_remote(output):
        return  # object stores have no folders
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder of {output}: {exc.strerror}") from None


def _plan_items(items, preset, overrides, base_set, overwrite, reports):
    """Plans for the items that will run; the others get their report status here."""
    from pipeline.job.plan import plan_job
    from pipeline.store.jobstore import JobStore, default_store_url
    from pipeline.store.urls import exists

    plans: dict[int, Any] = {}
    for i, item in enumerate(items):
        report = reports[i]
        try:
            cfg = load_config(preset, overrides, tuple(base_set) + item.set_items)
            store = default_store_url(item.input, item.output, cfg.store.work_dir)
            if exists(item.output) and not overwrite and not JobStore.exists(store):
                report.status = "skipped"
                report.error = "output exists (finished earlier); --overwrite redoes it"
                continue
            _make_parent(item.output)
            plans[i] = plan_job(item.input, item.output, cfg, overwrite)
            report.store = plans[i].store_url
        except UserError as exc:
            report.status, report.error = "failed", str(exc)
    return plans


def run_batch(
    items: list[BatchItem],
    *,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    base_set: tuple[str, ...] = (),
    overwrite: bool = False,
    restart: bool = False,
    progress: bool | Listener | None = None,
    report_path: Path | None = None,
    on_regions: Callable[[int], None] | None = None,
    cancel: stopping.CancelToken | None = None,
) -> list[ItemReport]:
    """Run every item; never raises for one item's failure (see the reports).
    ``progress``: a listener of ``pipeline.events`` (True: the CLI's batch bar);
    ``on_regions(n)`` hears of regions done (benchmarks); ``cancel``: a token another
    thread may cancel (the running items stop as after SIGTERM)."""
    import numpy as np

    from pipeline.job.launch import listener_for, workers_up

    listener, bars = listener_for(progress, ("batch",))
    with closing(bars) if bars is not None else nullcontext():
        reports = [ItemReport(i.input, i.output, overrides=list(i.set_items)) for i in items]
        report = _Report(report_path, reports)
        plans = _plan_items(items, preset, overrides or {}, base_set, overwrite, reports)
        report.save()
        if not plans:
            return reports
        first = next(iter(plans.values()))
        cfg = first.config
        if any(p.config.run.runner == "local" for p in plans.values()):
            raise UserError("batch runs on Ray; run.runner=local is for single jobs")
        total = sum(p.layout.frames * int(np.prod(p.layout.regions)) for p in plans.values())

        def refuse(refusals: dict[int, str]) -> None:
            """Fail the items whose model's weights are not usable."""
            for i, error in refusals.items():
                reports[i].status, reports[i].error = "failed", error

        with workers_up(plans, cfg, refuse, cancel):
            runnable = [i for i in plans if reports[i].status == "pending"]
            meter = JobEvents(listener, "").stage("batch", total, "region")

            def count(n: int, resumed: bool) -> None:
                meter.advance(n, resumed)
                if on_regions is not None:
                    on_regions(n)

            run = (restart, count, total, cfg, listener, cancel)
            _run_items(runnable, plans, reports, report, *run)
        report.save()
        return reports


def _run_items(
    runnable, plans, reports, report, restart, count, total, cfg, listener, cancel
) -> None:
    """Every runnable item as a graph on one loop, ``run.active_jobs`` at a time. Items
    that share a pool run together; a model change waits for the running items and
    frees the previous pool's workers first (their GPUs would be held otherwise)."""
    from pipeline.job.launch import graph_for, log_probe, make_executor, run_graphs

    index: dict[int, int] = {}
    started: dict[int, float] = {}

    def on_change(graph: Any, event: str) -> None:
        i = index[id(graph)]
        plan, r = plans[i], reports[i]
        if event == "begin":
            r.status = "running"
            report.save()
            log_probe(plan)
            started[i] = time.perf_counter()
            return
        exc, summary = graph.error, graph.summary
        if exc is None and summary is not None:
            r.status = "done"
            r.frames, r.megapixels = summary.frames, summary.out_megapixels
            r.regions_run, r.regions_total = summary.regions_run, summary.regions_total
            r.segments_run, r.segments_total = summary.segments_run, summary.segments_total
            r.scratch_peak_bytes = summary.scratch_peak_bytes
            r.model_busy = summary.model_busy
            r.mp_per_s = summary.mp_per_s
        elif isinstance(exc, Cancelled):
            r.status, r.error = "cancelled", str(exc)
        elif isinstance(exc, Interrupted):
            r.status, r.error = "terminated", str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            r.status, r.error = (
                "interrupted",
                "interrupted (Ctrl-C): run the same command to resume",
            )
        elif isinstance(exc, (UserError, JobFailed)):
            r.status, r.error = "failed", str(exc)
        else:  # one item's bug must not stop the others
            log.debug("item %s failed", plan.input_path, exc_info=exc)
            r.status, r.error = "failed", f"{type(exc).__name__}: {cause(exc)}"
        r.seconds = time.perf_counter() - started.get(i, time.perf_counter())
        log.info("batch: %s %s%s", r.status, r.output, f": {r.error}" if r.error else "")
        report.save()
        if listener is not None:
            listener(ItemFinished(r.output, r.input, r.status, r.error))

    graphs = []
    for i in runnable:
        g = graph_for(
            plans[i],
            restart=restart,
            events=listener,
            expected_regions=total,
            on_regions=count,
            on_change=on_change,
        )
        index[id(g)] = i
        graphs.append(g)
    order = {k: n for n, k in enumerate(dict.fromkeys(g.pool.key for g in graphs))}
    graphs.sort(key=lambda g: order[g.pool.key])
    current: list[str] = []
    with closing(make_executor(cfg)) as executor:

        def may_start(graph: Any, running: list[Any]) -> bool:
            if current and graph.pool.key == current[0]:
                return True
            if running:
                return False
            current[:] = [graph.pool.key]
            executor.close_pools(keep=graph.pool.key)
            return True

        run_graphs(
            graphs,
            cfg,
            executor=executor,
            active=cfg.run.active_jobs,
            may_start=may_start,
            cancel=cancel,
        )
