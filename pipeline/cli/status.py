"""``run_pipeline.py status TARGET``: a job's progress, read from its store.

TARGET is a job store (path or URL), an output path (its default store next to it), a
batch report, or a Ray job id (with ``--address``). Everything comes from what the
driver left in the store — the ``done`` flags and ``progress.json`` — so it works from
any machine that sees the store, and after the driver died.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.results import busy_text
from pipeline.store.jobstore import JobStore, is_local, local_path, read_progress
from pipeline.store.progress import driver_alive


def store_status(url: str) -> dict[str, Any]:
    """A job store's state; regions from its flags, the rest from progress.json."""
    if not JobStore.exists(url):
        raise UserError(f"no job store at {url}")
    store = JobStore.open(url, mode="r")
    record = read_progress(url) or {}
    status: dict[str, Any] = {"store": url, **record}
    if "done" in store.group:
        done = store.done_mask()
        segments = store.spec.get("segments") or []
        if segments and "encoded" in store.group:
            # An encoded segment's frames were freed with their flags: they count as done.
            encoded = store.encoded_mask()
            for (a, b), flag in zip(segments, encoded, strict=False):
                if flag:
                    done[a:b] = True
            status["segments_total"] = len(segments)
            status["segments_encoded"] = int(encoded[: len(segments)].sum())
        status["regions_total"], status["regions_done"] = int(done.size), int(done.sum())
    lay = store.layout
    status.setdefault("frames_total", lay.frames)
    state = record.get("status", "unknown")
    if state == "running":
        alive = driver_alive(record)
        age = time.time() - float(record.get("updated_at", 0))
        if alive is False:
            state = "interrupted"  # the driver died without writing a final state
        elif alive is None and age > 120:
            state = "stale"
        status["updated_s_ago"] = age
    status["state"] = state
    return status


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def format_store_status(s: dict[str, Any]) -> str:
    total, done = s.get("regions_total", 0), s.get("regions_done", 0)
    pct = 100.0 * done / total if total else 0.0
    lines = [f"job store: {s['store']}", f"  state: {s['state']}"]
    explain = {
        "interrupted": "stopped by Ctrl-C or its driver died: run the same command again to resume",
        "stale": "no update for a while from a driver on another host",
        "terminated": "stopped by SIGTERM: run the same command again to resume",
        "cancelled": "cancelled from the Python API: run the same job again to resume",
        "failed": "run the same command again once the cause is fixed: it resumes",
    }
    if s["state"] in explain:
        lines[-1] += f" ({explain[s['state']]})"
    if s.get("input"):
        lines.append(f"  job: {s['input']} -> {s.get('output')}")
    if s.get("host"):
        lines.append(f"  driver: pid {s.get('pid')} on {s['host']}, stage {s.get('stage')}")
    rate = s.get("regions_per_s")
    eta = s.get("eta_s") if s["state"] == "running" else None
    lines.append(
        f"  regions: {done}/{total} ({pct:.0f}%)"
        + (f", {rate:.2f} regions/s" if rate else "")
        + (f", ETA {_fmt_s(eta)}" if eta is not None else "")
    )
    if s.get("frames_total", 1) > 1:
        lines.append(f"  frames encoded: {s.get('frames_encoded', 0)}/{s['frames_total']}")
    if s.get("segments_total"):
        lines.append(f"  segments encoded: {s.get('segments_encoded', 0)}/{s['segments_total']}")
    if s.get("model_busy") is not None:
        lines.append(f"  {busy_text(s['model_busy'])} (the region workers' time in the model)")
    if s.get("scratch_bytes") is not None:
        lines.append(f"  scratch in use: {s['scratch_bytes'] / 2**20:.1f} MiB")
    if s.get("updated_s_ago") is not None:
        lines.append(f"  last update: {_fmt_s(s['updated_s_ago'])} ago")
    if s.get("error"):
        lines.append(f"  last error: {s['error']}")
    return "\n".join(lines)


def report_status(path: Path) -> tuple[dict[str, Any], str]:
    """A batch report, with each running item's store progress."""
    from pipeline.job.batch import ItemReport, format_table

    doc = json.loads(path.read_text())
    reports = [ItemReport(**item) for item in doc["items"]]
    lines = [format_table(reports)]
    for r in reports:
        if r.status == "running" and r.store and JobStore.exists(r.store):
            lines.append(format_store_status(store_status(r.store)))
    return doc, "\n".join(lines)


def resolve_target(target: str) -> tuple[str, str]:
    """(kind, location): kind is store | report | job | complete (an output with no
    store beside it: finished, its store removed after success, or run with
    ``--work-dir``). A store is given directly or
    found beside its output (``OUTPUT.job.zarr``), on disk or on object storage."""
    from pipeline.store.urls import exists

    if target.startswith("raysubmit_"):
        return "job", target
    if is_local(target):
        path = local_path(target)
        if path.suffix == ".json" and path.is_file():
            return "report", str(path)
    base = target.rstrip("/")
    for candidate in (base, base + ".job.zarr"):
        if JobStore.is_job_store(candidate):
            return "store", candidate
    if exists(base):
        return "complete", base
    raise UserError(f"{target}: no such job store, output or batch report")


def status_command(target: str, address: str | None, as_json: bool) -> tuple[int, str]:
    kind, where = resolve_target(target)
    if kind == "complete":
        if as_json:
            return 0, json.dumps({"output": where, "state": "complete"}, indent=1)
        return 0, (
            f"{where} is complete (no job store beside it: finished, or run with "
            "--work-dir: give the store's path)"
        )
    if kind == "job" or address:
        try:
            from pipeline.cli.submit import ray_job_status
        except ImportError:
            raise UserError("Ray job status needs the submit module (not installed)") from None
        info = ray_job_status(address, where)
        return 0, json.dumps(info, indent=1, default=str) if as_json else _format_job(info)
    if kind == "report":
        doc, text = report_status(Path(where))
        return 0, json.dumps(doc, indent=1) if as_json else text
    status = store_status(where)
    return 0, json.dumps(status, indent=1, default=str) if as_json else format_store_status(status)


def _format_job(info: dict[str, Any]) -> str:
    lines = [f"{k}: {v}" for k, v in info.items() if k != "logs"]
    if info.get("logs"):
        lines.append("last log lines:")
        lines.extend("  " + line for line in str(info["logs"]).splitlines()[-20:])
    return "\n".join(lines)
