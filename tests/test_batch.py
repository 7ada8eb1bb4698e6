"""Batches of inputs over one shared actor pool, SIGTERM, and ``status``.

One pool serves every item (the model loads once per actor), one bad item never stops
the others, reruns skip finished outputs and resume unfinished ones, the report and the
exit code say what happened. SIGTERM stops cleanly with exit 75 and a resumable store;
``status`` reads a job's progress from its store, also after its driver is gone.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.errors import UserError
from pipeline.job.batch import BatchItem, exit_code, format_table, read_manifest, run_batch
from pipeline.job.launch import run_job
from tests import faulty_model as fm
from tests.helpers import LOCAL_RUNNER, launch_cli, main_cli, make_config, synth_image

SMALL = {"scale": 2, "tile": 32, "overlap": 8, "region_out_px": 128, "chunk_out_px": 64}
SMALL_SET = (
    "model.scale=2",
    "tiling.tile_px=32",
    "tiling.overlap_px=8",
    "store.region_out_px=128",
    "store.chunk_out_px=64",
    "run.actors=2",
)


def _png(path: Path, h: int, w: int, seed: int) -> Path:
    Image.fromarray(synth_image(h, w, seed=seed)).save(path)
    return path


# ---------------------------------------------------------------------- manifests
@pytest.mark.unit
def test_manifest_forms_and_refusals(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.tif").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an input")
    listed = tmp_path / "m.yaml"
    listed.write_text(
        "- {input: a.png, output: out/a.tif, set: [model.scale=2]}\n"
        "- {input: /abs/b.tif, output: s3://bucket/b.zarr, set: {tiling.window: cosine}}\n"
    )
    items = read_manifest(str(listed))
    assert items == [
        BatchItem(str(tmp_path / "a.png"), str(tmp_path / "out/a.tif"), ("model.scale=2",)),
        BatchItem("/abs/b.tif", "s3://bucket/b.zarr", ("tiling.window=cosine",)),
    ]
    mapping = tmp_path / "m.json"
    mapping.write_text(
        json.dumps({"set": ["model.scale=2"], "items": [{"input": "a.png", "output": "x.tif"}]})
    )
    assert read_manifest(str(mapping))[0].set_items == ("model.scale=2",)

    by_dir = read_manifest(str(tmp_path), "{parent}/up/{stem}_x2{suffix}")
    assert [Path(i.output).name for i in by_dir] == ["a_x2.png", "b_x2.tif"]  # no .txt
    by_glob = read_manifest(str(tmp_path / "*.png"), "o/{name}.tif")
    assert [i.output for i in by_glob] == ["o/a.png.tif"]

    bad = tmp_path / "bad.yaml"
    for text, message in (
        ("- {input: a.png}\n", "needs 'input' and 'output'"),
        ("- {input: a.png, output: x.tif, scale: 2}\n", "unknown key(s) scale"),
        ("[]\n", "non-empty list"),
        ("- {input: a.png, output: x.tif, set: 3}\n", "'set' must be"),
        ("- [unclosed\n", "cannot read manifest"),
    ):
        bad.write_text(text)
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_manifest(str(bad))
    with pytest.raises(UserError, match="needs --output-pattern"):
        read_manifest(str(tmp_path))
    with pytest.raises(UserError, match="same output"):
        read_manifest(str(tmp_path), "out.tif")
    with pytest.raises(UserError, match="no inputs match"):
        read_manifest(str(tmp_path / "*.mkv"), "{stem}.mkv")


# ------------------------------------------------------------------ shared pool
@pytest.fixture
def faulty(tmp_path, monkeypatch):
    fm.register(monkeypatch)
    log = tmp_path / "calls.log"
    ctl = tmp_path / "control.json"

    def control(**kw) -> Path:
        return fm.write_control(ctl, log=str(log), **kw)

    return control, log


@pytest.mark.integration
def test_batch_shares_workers_isolates_failures_and_resumes(tmp_path, ray_local, faulty):
    """Three good items, a damaged one, a missing one and a poisoned one: the good ones
    come out identical to single runs, on the same two workers; the poisoned one fails
    alone, keeps its store, and after the model is fixed a rerun resumes only it."""
    control, log = faulty
    ctl = control(poison="raise")
    good = [_png(tmp_path / f"in{i}.png", 96 + 16 * i, 128, seed=i) for i in range(3)]
    poisoned = tmp_path / "poisoned.tif"
    tifffile.imwrite(poisoned, fm.plant_poison(synth_image(128, 128, seed=5), 96, 96))
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(good[0].read_bytes()[:300])  # a truncated PNG
    items = [BatchItem(str(p), str(tmp_path / f"out{i}.tif")) for i, p in enumerate(good)]
    items[1] = BatchItem(items[1].input, items[1].output, ("tiling.window=cosine",))
    items += [
        BatchItem(str(damaged), str(tmp_path / "damaged_x2.tif")),
        BatchItem(str(tmp_path / "missing.png"), str(tmp_path / "missing_x2.tif")),
        BatchItem(str(poisoned), str(tmp_path / "poisoned_x2.tif")),
    ]
    base = SMALL_SET + ("model.name=faulty", f"model.weights={ctl}", "run.region_retries=1")
    report = tmp_path / "report.json"
    reports = run_batch(items, base_set=base, progress=False, report_path=report)

    status = [r.status for r in reports]
    assert status == ["done", "done", "done", "failed", "failed", "failed"], reports
    # Refused at probe time now (reading its metadata reaches the damage) or at ingest.
    assert re.search(r"damaged\.png could not be (decoded|read as PNG)", reports[3].error)
    assert "does not exist" in reports[4].error
    assert "frame 0 region (row 1, col 1)" in reports[5].error
    assert exit_code(reports) == 3
    saved = json.loads(report.read_text())
    assert saved["counts"] == {"done": 3, "failed": 3}
    assert [i["status"] for i in saved["items"]] == status
    assert saved["items"][0]["megapixels"] == pytest.approx(96 * 2 * 128 * 2 / 1e6)
    # The workers' share of time in the model, from the regions' own timings (Ray path).
    assert all(0 < i["model_busy"] <= 1 for i in saved["items"][:3]), saved["items"][:3]
    table = format_table(reports)
    assert "3 done, 3 failed" in table and "poisoned_x2.tif" in table
    assert " busy " in table.splitlines()[0] and "%" in table.splitlines()[1]
    # One pool for the whole batch: the model calls came from the two actors only.
    pids = {pid for pid, *_ in fm.read_log(log)}
    assert 1 <= len(pids) <= 2, pids
    poisoned_store = reports[5].store
    assert poisoned_store and Path(poisoned_store).exists()  # kept for the resume
    assert not Path(reports[0].store).exists()  # removed after success

    # Each good output equals the same job run on its own.
    for i, item in enumerate(items[:3]):
        extra = {"window": "cosine"} if i == 1 else {}
        alone = tmp_path / f"alone{i}.tif"
        cfg = make_config(run__runner="local", **(SMALL | extra))  # the runners agree
        run_job(item.input, str(alone), cfg, progress=False)
        assert np.array_equal(tifffile.imread(item.output), tifffile.imread(alone))

    # Fix the model and run the same batch again: the finished ones are skipped, the
    # poisoned one resumes from its store (only its failed region runs).
    control(poison=None)
    again = run_batch(items, base_set=base, progress=False, report_path=report)
    assert [r.status for r in again] == ["skipped"] * 3 + ["failed", "failed", "done"]
    assert again[5].regions_run == 1 and again[5].regions_total == 4
    clean = tmp_path / "clean.tif"
    run_job(str(poisoned), str(clean), make_config(run__runner="local", **SMALL), progress=False)
    assert np.array_equal(tifffile.imread(items[5].output), tifffile.imread(clean))


@pytest.mark.integration
def test_batch_cli_directory_exit_codes_and_status(tmp_path, ray_local):
    """The CLI over a directory: exit 0, a table and a report; a rerun skips everything;
    ``status`` reads the report. The CLI's ``main`` in this process, on the session's
    Ray: the subject is what the CLI does with a batch, not the Ray it starts."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        _png(src / f"img{i}.png", 64, 80, seed=i)
    (tmp_path / "up").mkdir()
    report = tmp_path / "r.json"
    args = ["batch", src, "--output-pattern", str(tmp_path / "up" / "{stem}_x2.png")]
    args += ["--scale", "2", "--report", report, "--quiet"]
    first = main_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "2 done" in first.stdout and "Traceback" not in first.stderr
    for i in range(2):
        assert Image.open(tmp_path / "up" / f"img{i}_x2.png").size == (160, 128)
    again = main_cli(*args)
    assert again.returncode == 0 and "2 skipped" in again.stdout
    shown = main_cli("status", report)
    assert shown.returncode == 0 and "2 skipped" in shown.stdout

    bad = main_cli("batch", tmp_path / "nothing.yaml", "--quiet")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert "Traceback" not in bad.stderr


# ------------------------------------------------------------------------ SIGTERM
def _sigterm_at(proc: subprocess.Popen, bar: str, count: int) -> tuple[int, str]:
    """SIGTERM ``proc`` once its ``bar`` progress bar shows at least ``count`` regions
    (tqdm redraws with \\r, so stderr is read a character at a time). Returns (the
    count it was sent at, 0 if the run ended first; the rest of stderr)."""
    buffer, sent = "", 0
    while char := proc.stderr.read(1):
        buffer += char
        if char in "\r\n":
            m = re.search(rf"{bar}:.*\|\s*(\d+)/(\d+) ", buffer)
            buffer = ""
            if m and int(m.group(1)) >= count:
                sent = int(m.group(1))
                proc.send_signal(signal.SIGTERM)
                break
    return sent, proc.stderr.read()


@pytest.mark.integration
def test_sigterm_stops_cleanly_and_the_rerun_resumes(tmp_path):
    """SIGTERM mid-upscale: exit 75 with one line, no output or temporary left, every
    flagged region complete; ``status`` says terminated; the rerun finishes the job
    and gives exactly the output of an uninterrupted run. On the in-process runner: the
    SIGTERM of a run on Ray (calls in flight on actors) is the batch test below."""
    from pipeline.cli.status import store_status

    src = _png(tmp_path / "in.png", 320, 400, seed=3)
    out = tmp_path / "out.tif"
    args = [src, "-o", out, "--scale", "2", "--tile", "32", "--overlap", "8", "--batch-size", "1"]
    args += ["--set", "store.region_out_px=64", "--set", "store.chunk_out_px=64"]
    args += ["--set", "run.term_grace_s=30", *LOCAL_RUNNER]
    proc = launch_cli(*args)
    done, rest = _sigterm_at(proc, "upscale", 20)
    assert proc.wait(timeout=120) == 75, rest
    assert done, "the job never reached the upscale stage"
    lines = [ln for ln in rest.replace("\r", "\n").splitlines() if ln.strip()]
    assert lines[-1].startswith("error: stopped by SIGTERM") and "Traceback" not in rest
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]

    store = tmp_path / "out.tif.job.zarr"
    status = store_status(str(store))
    assert status["state"] == "terminated"
    assert done <= status["regions_done"] < status["regions_total"]
    shown = main_cli("status", out)
    assert shown.returncode == 0 and "terminated" in shown.stdout

    clean = tmp_path / "clean.tif"
    cfg = make_config(
        scale=2,
        tile=32,
        overlap=8,
        region_out_px=64,
        chunk_out_px=64,
        batch_size=1,
        run__runner="local",  # the runners agree: tests/test_video.py
    )
    run_job(str(src), str(clean), cfg, progress=False)
    from pipeline.store.jobstore import JobStore

    flags = JobStore.open(str(store), mode="r").done_mask()[0]
    partial = JobStore.open(str(store), mode="r").array("output")[0]
    expected = tifffile.imread(clean)
    for row, col in zip(*np.nonzero(flags), strict=True):
        cut = np.s_[row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64]
        assert np.array_equal(partial[cut], expected[cut])

    resumed = main_cli(*args, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{int(flags.sum())} resumed from the store" in resumed.stdout
    assert np.array_equal(tifffile.imread(out), expected)


@pytest.mark.integration
def test_status_of_a_dead_driver_and_of_nothing(tmp_path):
    """A record saying "running" from a process that no longer exists reads as
    interrupted; unknown targets are one-line errors."""
    from pipeline.cli.status import format_store_status, store_status
    from pipeline.store.jobstore import PROGRESS_KEY

    src = _png(tmp_path / "in.png", 64, 64, seed=1)
    out = tmp_path / "out.tif"
    cfg = make_config(run__runner="local", keep=True, **SMALL)
    run_job(str(src), str(out), cfg, progress=False)
    store = tmp_path / "out.tif.job.zarr"
    record = json.loads((store / PROGRESS_KEY).read_text())
    assert record["status"] == "done" and record["regions_done"] == record["regions_total"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record.update(status="running", pid=dead.pid, updated_at=time.time() - 300)
    (store / PROGRESS_KEY).write_text(json.dumps(record))
    status = store_status(str(store))
    assert status["state"] == "interrupted"
    assert "run the same command again to resume" in format_store_status(status)

    missing = main_cli("status", tmp_path / "nope.tif")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    finished = main_cli("status", src)  # exists, no store beside it
    # A finished job is not an error: its store was removed after success.
    assert finished.returncode == 0, finished.stderr
    assert "is complete (no job store beside it" in finished.stdout


@pytest.mark.integration
def test_sigterm_stops_a_batch_and_the_rerun_completes_it(tmp_path, ray_local):
    """SIGTERM while the first items upscale: exit 75, the running items are
    ``terminated`` with resumable stores, the items never started stay ``pending``, no
    output is half-written; the same command then finishes the batch (exit 0)."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        _png(src / f"img{i}.png", 192, 192, seed=20 + i)
    (tmp_path / "up").mkdir()
    report = tmp_path / "r.json"
    args = ["batch", src, "--output-pattern", str(tmp_path / "up" / "{stem}_x2.tif")]
    args += ["--scale", "2", "--tile", "32", "--overlap", "8", "--batch-size", "1"]
    args += ["--report", report, "--set", "store.region_out_px=64"]
    args += ["--set", "store.chunk_out_px=64", "--set", "run.active_jobs=2"]
    proc = launch_cli(*args)
    seen, rest = _sigterm_at(proc, "batch", 10)
    assert proc.wait(timeout=120) == 75, rest
    assert seen, "the batch never reached the upscale stage"
    assert "Traceback" not in rest
    items = json.loads(report.read_text())["items"]
    statuses = [i["status"] for i in items]
    assert statuses[:2] == ["terminated", "terminated"], statuses
    assert statuses[2:] == ["pending", "pending"], statuses
    # Nothing published, no temporaries: only the two stores, kept for the resume.
    left = sorted(p.name for p in (tmp_path / "up").iterdir())
    assert left == ["img0_x2.tif.job.zarr", "img1_x2.tif.job.zarr"]
    assert [Path(i["store"]).name for i in items[:2]] == left

    again = main_cli(*args, "--quiet")  # the rerun in this process, on the session's Ray
    assert again.returncode == 0, again.stderr
    final = json.loads(report.read_text())["items"]
    assert [i["status"] for i in final] == ["done"] * 4
    # The terminated items resumed: the regions flagged before SIGTERM were not redone.
    run, total = (sum(i[k] for i in final[:2]) for k in ("regions_run", "regions_total"))
    assert run <= total - seen
    for i in range(4):
        assert tifffile.imread(tmp_path / "up" / f"img{i}_x2.tif").shape == (384, 384, 3)


@pytest.mark.model  # the weights check imports torch
def test_weights_are_refused_before_the_workers_start(tmp_path):
    """``workers_up``, which single jobs and batches share: with the workers on this
    machine every plan's refusal is heard at once, before the runtime block runs; plans
    of one model config get the same line, a model that needs no weights none."""
    from pipeline.config import load_config
    from pipeline.job.launch import workers_up
    from pipeline.job.plan import plan_job

    Image.fromarray(synth_image(16, 16)).save(tmp_path / "in.png")
    (tmp_path / "w").mkdir()  # an empty weights directory
    s3diff = load_config(None, {}, ["model.name=s3diff", f"model.weights={tmp_path / 'w'}"])
    bicubic = load_config(None, {}, ["model.name=bicubic"])
    plans = {
        n: plan_job(str(tmp_path / "in.png"), str(tmp_path / f"o{n}.tif"), cfg, False)
        for n, cfg in enumerate((s3diff, bicubic, s3diff))
    }
    local = load_config(None, {}, ["run.runner=local"])
    heard: list[dict[int, str]] = []
    with workers_up(plans, local, heard.append):
        inside = list(heard)
    assert inside == heard and len(heard) == 1  # before the block ran, once
    assert sorted(heard[0]) == [0, 2] and heard[0][0] == heard[0][2]
    assert heard[0][0].startswith("S3Diff weights are not usable: ")
    assert "run_pipeline.py weights check" in heard[0][0]
