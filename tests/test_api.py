"""The Python API (issue 24): ``pipeline.upscale`` and ``pipeline.upscale_batch`` called
in-process, their results, errors, progress events and cancellation, checked with the
readers users use; the CLI's tests cover the same code through the CLI.

The jobs run on the in-process runner where Ray is not the subject; the batch (which
runs on Ray) reuses the session's already-initialised Ray, as a notebook attached to a
cluster would."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import pipeline
from pipeline.api import batch_items, job_settings
from pipeline.bars import BarRenderer
from pipeline.events import (
    ItemFinished,
    SegmentsEncoded,
    StageStarted,
    UnitsDone,
    WarningLogged,
)
from pipeline.job.batch import BatchItem
from pipeline.results import ItemResult
from pipeline.store.jobstore import JobStore, default_store_url, read_progress
from tests import faulty_model as fm
from tests.helpers import ROOT, bicubic_reference, synth_image
from tests.test_video import assert_pixels_upscaled, assert_video_preserved
from tests.video_fixtures import make_clip

# Small tiles and one region per 64 output px: several regions even on tiny images.
SMALL = {
    "tiling.tile_px": 32,
    "tiling.overlap_px": 8,
    "store.region_out_px": 64,
    "store.chunk_out_px": 64,
}
LOCAL = {**SMALL, "run.runner": "local"}


def _png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    Image.fromarray(synth_image(h, w, seed=seed)).save(path)
    return path


# --------------------------------------------------------------------------- unit
@pytest.mark.unit
def test_settings_layer_like_the_cli():
    """A config mapping, then the keywords (like the CLI's flags), then the overrides
    (like --set); list overrides stay items; a name without a section is refused."""
    preset, flags, items = job_settings(
        {"model": {"scale": 3}, "tiling": {"tile_px": 64}},
        {"tiling.tile_px": 48},
        model="bicubic",
        weights=Path("/w"),
        scale=2,
        address=None,
    )
    assert preset is None and items == ()
    assert flags == {
        "model.scale": 2,
        "tiling.tile_px": 48,
        "model.name": "bicubic",
        "model.weights": "/w",
    }
    preset, flags, items = job_settings("configs/default.yaml", ["run.actors=1"], scale=None)
    assert preset == "configs/default.yaml" and flags == {} and items == ("run.actors=1",)
    with pytest.raises(pipeline.UserError, match="'section.key'"):
        job_settings(None, {"scale": 2})
    with pytest.raises(pipeline.UserError, match="must be a mapping"):
        job_settings({"model": 2}, None)


@pytest.mark.unit
def test_batch_items_from_a_list():
    items = batch_items(
        [
            ("a.png", "out/a.tif"),
            ("b.png", Path("out/b.tif"), {"model.scale": 2}),
            {"input": "c.mp4", "output": "out/c.mkv", "set": ["video.crf=20"]},
            Path("shots/d.png"),
            BatchItem("e.png", "out/e.tif"),
        ],
        "out/{stem}_x4.tif",
    )
    assert items == [
        BatchItem("a.png", "out/a.tif"),
        BatchItem("b.png", "out/b.tif", ("model.scale=2",)),
        BatchItem("c.mp4", "out/c.mkv", ("video.crf=20",)),
        BatchItem("shots/d.png", "out/d_x4.tif"),
        BatchItem("e.png", "out/e.tif"),
    ]
    for bad, message in (
        ([("a.png",)], "give \\(input, output\\)"),
        ([{"input": "a.png"}], "needs 'input' and 'output'"),
        ([], "no items"),
        ([("a.png", "o.tif"), ("b.png", "o.tif")], "same output"),
        (["a.png"], "needs --output-pattern"),
    ):
        with pytest.raises(pipeline.UserError, match=message):
            batch_items(bad, None)


@pytest.mark.unit
def test_errors_are_one_family_with_the_cli_exit_codes():
    kinds = {
        pipeline.UserError: 2,
        pipeline.JobFailed: 3,
        pipeline.Interrupted: 75,
        pipeline.Terminated: 75,
        pipeline.Cancelled: 75,
    }
    for kind, code in kinds.items():
        assert issubclass(kind, pipeline.Error) and kind.exit_code == code
    assert issubclass(pipeline.Cancelled, pipeline.Interrupted)
    assert issubclass(pipeline.Terminated, pipeline.Interrupted)
    from pipeline.runner import stopping

    assert stopping.Terminated is pipeline.Terminated  # the CLI's SIGTERM path


@pytest.mark.unit
def test_batch_result_check_raises_the_kind_of_its_exit_code():
    def result(*statuses: str) -> pipeline.BatchResult:
        return pipeline.BatchResult(
            [ItemResult(f"in{i}", f"o{i}", s) for i, s in enumerate(statuses)]
        )

    assert result("done", "skipped").check().ok
    with pytest.raises(
        pipeline.JobFailed, match=r"2 of 3 item\(s\) not done: in1 \(failed\); in2 \(cancelled\)"
    ):
        result("done", "failed", "cancelled").check()
    assert result("done", "failed", "cancelled").exit_code == 3
    with pytest.raises(pipeline.Cancelled):
        result("done", "cancelled").check()
    with pytest.raises(pipeline.Terminated):
        result("terminated").check()
    assert result("cancelled").exit_code == 75
    assert "1 done" in result("done").table()


@pytest.mark.unit
def test_bar_renderer_draws_the_cli_bars_from_events():
    """The CLI's lines come from events: one bar per listed stage, a video's segments
    as its postfix; a batch's bar ignores the items' own stages."""
    out = io.StringIO()
    bars = BarRenderer(file=out)
    bars(StageStarted("o.mkv", "ingest", 2, 0, "band"))  # not a CLI bar
    bars(StageStarted("o.mkv", "upscale", 4, 1, "region"))
    bars(SegmentsEncoded("o.mkv", 0, 2, 0))
    for done in (2, 3, 4):
        bars(UnitsDone("o.mkv", "upscale", done, 4, "region", 1.0, 4.0 - done))
    bars(SegmentsEncoded("o.mkv", 2, 2, 8))
    bars(StageStarted("o.mkv", "assemble", 1, 0, "step"))  # closes the upscale bar
    bars.close()
    lines = out.getvalue().splitlines()
    counts = [
        int(m.group(1)) for m in map(re.compile(r"upscale:.*\|\s*(\d+)/4 ").search, lines) if m
    ]
    assert counts[0] == 1 and counts[-1] == 4
    assert "encoded 2/2 segments" in lines[-1] and not any("ingest" in ln for ln in lines)

    out = io.StringIO()
    bars = BarRenderer(stages=("batch",), file=out)
    bars(StageStarted("", "batch", 10, 0, "region"))
    bars(StageStarted("a.tif", "upscale", 6, 0, "region"))  # an item's: no bar of its own
    bars(UnitsDone("a.tif", "upscale", 6, 6, "region", 2.0, 0.0))
    bars(UnitsDone("", "batch", 6, 10, "region", 2.0, 2.0))
    bars.close()
    text = out.getvalue()
    assert "batch:" in text and "6/10" in text and "upscale" not in text


# -------------------------------------------------------------------- integration
@pytest.mark.integration
def test_import_is_light_and_pydoc_is_a_reference():
    """``import pipeline`` loads no torch, Ray, numpy or zarr; ``python -m pydoc
    pipeline`` shows the calls, results, errors and events with their docs."""
    code = (
        "import sys, pipeline; "
        "print(sorted(m for m in ('torch', 'ray', 'numpy', 'zarr', 'yaml') if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert run.stdout.strip() == "[]", run.stdout
    doc = subprocess.run(
        [sys.executable, "-m", "pydoc", "pipeline"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PAGER": "cat", "PATH": "/usr/bin:/bin"},
    ).stdout
    for name in pipeline.__all__:
        assert re.search(rf"\b{name}\b", doc), name
    assert re.search(r"\bupscale\(input\b.*\boutput\b.*, \*, model\b.*\bprogress\b", doc)
    assert re.search(r"upscale_batch\(items_or_manifest\b.*, \*, output_pattern\b.*report", doc)
    assert "Raises :class:`UserError`" in doc and "class CancelToken" in doc
    assert "rate_per_s" in doc and "regions_resumed" in doc


@pytest.mark.integration
def test_upscale_an_image_with_events_in_order(tmp_path):
    src = _png(tmp_path / "in.png", 72, 104, seed=1)
    out = tmp_path / "out.tif"
    events: list = []
    result = pipeline.upscale(
        src, out, model="bicubic", scale=2, overrides={**LOCAL, "store.keep": True},
        progress=events.append,
    )  # fmt: skip
    want = bicubic_reference(np.asarray(Image.open(src)), 2)
    np.testing.assert_allclose(tifffile.imread(out).astype(int), want.astype(int), atol=1)
    assert isinstance(result, pipeline.Result)
    assert result.output == str(out) and result.input == str(src)
    assert (result.frames, result.frames_resumed, result.regions_resumed) == (1, 0, 0)
    assert result.regions_run == result.regions_total == 12  # 144x208 in 64-px regions
    assert result.out_megapixels == pytest.approx(144 * 208 / 1e6)
    assert result.mp_per_s > 0 and result.seconds > 0
    assert (result.model, result.weights, result.store_kept) == ("bicubic", None, True)
    assert result.line().startswith("done in ") and result.line().endswith(f"-> {out}")
    record = read_progress(result.store_url)  # what `status` reads agrees
    assert record["status"] == "done" and record["regions_done"] == result.regions_total

    stages = [(e.stage, e.total) for e in events if isinstance(e, StageStarted)]
    assert [s for s, _ in stages] == ["ingest", "upscale", "publish"]
    assert stages[1] == ("upscale", 12)
    for stage, total in stages:  # each stage's units count up to its total, in order
        done = [e.done for e in events if isinstance(e, UnitsDone) and e.stage == stage]
        assert done == list(range(1, total + 1)), stage
    current = None
    for event in events:  # every unit belongs to the stage started last
        if isinstance(event, StageStarted):
            current = event.stage
        else:
            assert isinstance(event, UnitsDone) and event.stage == current, event
    last = [e for e in events if isinstance(e, UnitsDone) and e.stage == "upscale"][-1]
    assert last.rate_per_s and last.rate_per_s > 0 and last.eta_s == 0
    assert all(e.output == str(out) for e in events)


@pytest.mark.integration
def test_upscale_a_video(tmp_path):
    src = make_clip(tmp_path / "clip.mp4", frames=12, gop=4)
    out = tmp_path / "clip_x2.mp4"
    events: list = []
    result = pipeline.upscale(
        str(src), str(out), model="bicubic", scale=2,
        overrides={**LOCAL, "video.segment_frames": 4}, progress=events.append,
    )  # fmt: skip
    assert_video_preserved(src, out)  # frames, pts, audio packets, colour tags
    assert_pixels_upscaled(src, out)
    assert (result.frames, result.frames_run, result.segments_total) == (12, 12, 3)
    assert result.segments_run == 3 and result.scratch_peak_bytes
    assert result.store_kept is False and not Path(result.store_url).exists()
    assert "12 frames" in result.line() and "3/3 segments encoded" in result.line()
    encoded = [(e.encoded, e.frames_encoded) for e in events if isinstance(e, SegmentsEncoded)]
    assert encoded == [(0, 0), (1, 4), (2, 8), (3, 12)]
    stages = [e.stage for e in events if isinstance(e, StageStarted)]
    assert stages == ["upscale", "assemble"]


@pytest.mark.integration
def test_cancel_from_another_thread_then_resume(tmp_path):
    """A token cancelled from another thread mid-upscale: ``Cancelled`` (an
    ``Interrupted``, exit code 75) with the store kept and resumable, no output; the
    same call again resumes and gives the clean result."""
    src = _png(tmp_path / "in.png", 128, 160, seed=2)
    out = tmp_path / "out.png"
    token = pipeline.CancelToken()
    asked = threading.Event()

    def progress(event) -> None:
        if isinstance(event, UnitsDone) and event.stage == "upscale" and event.done == 5:
            asked.set()
            assert token.wait(10)  # hold the job until the other thread has cancelled

    canceller = threading.Thread(target=lambda: asked.wait(60) and token.cancel())
    canceller.start()
    kwargs = {"model": "bicubic", "scale": 2, "overrides": LOCAL}
    with pytest.raises(pipeline.Cancelled) as stopped:
        pipeline.upscale(src, out, progress=progress, cancel=token, **kwargs)
    canceller.join()
    assert isinstance(stopped.value, pipeline.Interrupted) and stopped.value.exit_code == 75
    assert "run the same job again to resume" in str(stopped.value)
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    url = default_store_url(str(src), str(out), None)
    done = int(JobStore.open(url, mode="r").done_mask().sum())
    assert 5 <= done < 20
    assert read_progress(url)["status"] == "cancelled"

    result = pipeline.upscale(src, out, **kwargs)
    assert result.regions_total == 20 and result.regions_resumed == done
    assert result.regions_run == 20 - done
    want = bicubic_reference(np.asarray(Image.open(src)), 2)
    np.testing.assert_allclose(np.asarray(Image.open(out)).astype(int), want.astype(int), atol=1)


@pytest.mark.integration
def test_each_error_kind_with_the_cli_line(tmp_path, monkeypatch, capsys):
    """Bad input, bad config and a region that fails after its retries raise their
    kinds, each with the line the CLI prints after ``error:``; the failed job keeps its
    store and a fixed rerun resumes."""
    from pipeline.cli.main import main

    src = _png(tmp_path / "in.png", 64, 64)
    cases = [
        (dict(input=tmp_path / "missing.png"), pipeline.UserError, "does not exist"),
        (dict(overrides={**LOCAL, "tiling.window": "boxcar"}), pipeline.UserError, "window"),
        (dict(scale=0), pipeline.UserError, "scale"),
    ]
    for change, kind, text in cases:
        args = {"input": src, "output": tmp_path / "o.tif", "model": "bicubic", "scale": 2}
        args["overrides"] = LOCAL
        args.update(change)
        with pytest.raises(kind, match=text) as raised:
            pipeline.upscale(args.pop("input"), args.pop("output"), **args)
        argv = [str(change.get("input", src)), "-o", str(tmp_path / "o.tif"), "--model", "bicubic"]
        argv += ["--scale", str(args["scale"])]
        argv += [a for k, v in args["overrides"].items() for a in ("--set", f"{k}={v}")]
        assert main(argv) == kind.exit_code
        assert capsys.readouterr().err.splitlines()[-1] == f"error: {raised.value}"
    assert not (tmp_path / "o.tif").exists()

    fm.register(monkeypatch)
    poisoned = tmp_path / "poisoned.tif"
    tifffile.imwrite(poisoned, fm.plant_poison(synth_image(64, 128, seed=5), 40, 100))
    ctl = fm.write_control(tmp_path / "control.json", poison="raise")
    failing = {**LOCAL, "model.weights": str(ctl), "run.region_retries": 1}
    out = tmp_path / "poisoned_x2.tif"
    events: list = []
    with pytest.raises(pipeline.JobFailed, match=r"frame 0 region .* failed 2 time\(s\)") as failed:
        pipeline.upscale(
            poisoned, out, model="faulty", scale=2, overrides=failing, progress=events.append
        )
    warned = [e.message for e in events if isinstance(e, WarningLogged)]
    assert warned and all(w.startswith("retrying frame 0 region") for w in warned), warned
    assert failed.value.exit_code == 3 and "the job store" in str(failed.value)
    assert "\n" not in str(failed.value) and not out.exists()
    fm.write_control(ctl, poison=None)  # the model is fixed: the rerun resumes
    again = pipeline.upscale(poisoned, out, model="faulty", scale=2, overrides=failing)
    assert 0 < again.regions_run < again.regions_total  # the poisoned regions only
    assert again.regions_resumed == again.regions_total - again.regions_run
    want = bicubic_reference(tifffile.imread(poisoned), 2)
    np.testing.assert_allclose(tifffile.imread(out).astype(int), want.astype(int), atol=1)


@pytest.mark.integration
def test_batch_on_an_initialised_ray_with_one_failing_item(tmp_path, ray_local):
    """A list batch on the Ray this process already runs (reused and left running): the
    good image and video come out as single runs would, the missing input fails alone,
    the report and events say so, and ``check()`` raises ``JobFailed``."""
    node = ray_local.get_runtime_context().get_node_id()
    img = _png(tmp_path / "a.png", 64, 96, seed=3)
    clip = make_clip(tmp_path / "b.mkv", frames=8, gop=4)
    events: list = []
    video = {"input": clip, "output": tmp_path / "out" / "b_x2.mkv"}
    result = pipeline.upscale_batch(
        [
            (img, tmp_path / "out" / "a_x2.tif"),
            (tmp_path / "missing.png", tmp_path / "out" / "missing_x2.tif"),
            {**video, "set": {"video.segment_frames": 4}},
        ],
        model="bicubic", scale=2, overrides={**SMALL, "run.actors": 1},
        report=tmp_path / "report.json", progress=events.append,
    )  # fmt: skip
    assert ray_local.is_initialized() and ray_local.get_runtime_context().get_node_id() == node
    assert [r.status for r in result.items] == ["done", "failed", "done"]
    assert "does not exist" in result.items[1].error and result.exit_code == 3
    want = bicubic_reference(np.asarray(Image.open(img)), 2)
    np.testing.assert_allclose(
        tifffile.imread(tmp_path / "out" / "a_x2.tif").astype(int), want.astype(int), atol=1
    )
    assert_video_preserved(clip, tmp_path / "out" / "b_x2.mkv")
    assert result.items[2].frames == 8 and result.items[2].segments_total == 2
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["counts"] == {"done": 2, "failed": 1} and result.report == str(
        tmp_path / "report.json"
    )
    finished = [(e.output, e.status) for e in events if isinstance(e, ItemFinished)]
    assert sorted(finished) == sorted(
        (str(tmp_path / "out" / n), "done") for n in ("a_x2.tif", "b_x2.mkv")
    )  # the missing one failed at planning, before anything ran
    batch = [e for e in events if getattr(e, "stage", None) == "batch"]
    assert isinstance(batch[0], StageStarted) and batch[-1].done == batch[0].total
    with pytest.raises(
        pipeline.JobFailed, match=r"1 of 3 item\(s\) not done: .*missing\.png \(failed\)"
    ):
        result.check()
