"""What a new user meets in the first hour (issue 13): progress bars that share stderr
with the stage messages, Ctrl-C, the resume line, the program's name in usage lines,
batch output folders, and ``status`` on a finished output."""

from __future__ import annotations

import io
import logging
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from pipeline.bars import BarLogHandler, LineWriter, open_bar
from pipeline.cli.arguments import build_parser, program_name
from pipeline.regions.graph import resume_line
from tests.helpers import LOCAL_RUNNER, launch_cli, main_cli, synth_image

BAR = re.compile(r"upscale:.*\|\s*(\d+)/(\d+) ")  # as tests/test_reliability.py reads it


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    Image.fromarray(synth_image(h, w, seed=seed)).save(path)
    return path


# ---------------------------------------------------------------------- bars
@pytest.mark.unit
def test_non_terminal_bar_writes_plain_lines():
    out = io.StringIO()
    bar = open_bar(8, desc="upscale", unit="region", initial=2, file=out)
    bar.set_postfix_str("encoded 1/4 segments", refresh=False)
    for _ in range(3):
        time.sleep(0.25)  # past LINE_EVERY_S: every change is a line
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    counts = [int(m.group(1)) for m in map(BAR.search, text.splitlines()) if m]
    assert counts[0] == 2 and counts[-1] == 5 and {3, 4} <= set(counts)
    assert re.search(r"encoded (\d+)/(\d+) segments", text)


@pytest.mark.unit
def test_line_writer_drops_redraws_and_repeats():
    out = io.StringIO()
    w = LineWriter(out)
    for frame in ("\rbar 1", "\rbar 1", "\r      \r", "\rbar 2"):
        w.write(frame)
        w.flush()
    w.write("\n")
    w.flush()
    assert out.getvalue() == "bar 1\nbar 2\n"


@pytest.mark.unit
def test_log_records_go_above_a_terminal_bar():
    term = _Terminal()
    bar = open_bar(10, desc="upscale", unit="region", file=term)
    bar.update(3)
    bar.refresh()
    logger = logging.getLogger("tests.first_hour")
    handler = BarLogHandler(term)
    logger.addHandler(handler)
    try:
        logger.warning("publish: tiff with 3 pyramid level(s)")
    finally:
        logger.removeHandler(handler)
        bar.close()
    text = term.getvalue()
    # The message starts a line of its own (the bar was cleared first) and ends one.
    assert re.search(r"(^|[\r\n])publish: tiff with 3 pyramid level\(s\)\n", text), repr(text)
    assert "]publish" not in text and "segments]p" not in text


@pytest.mark.unit
def test_resume_line():
    assert resume_line(0, 96) is None
    assert resume_line(40, 96) == "resume: 40 of 96 regions done"
    assert resume_line(40, 96, 3, 8) == "resume: 40 of 96 regions done, 3 of 8 segments encoded"


# ---------------------------------------------------------------- program name
@pytest.mark.unit
def test_usage_names_the_program_as_invoked(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/sr-pipeline", "--help"])
    assert build_parser().format_usage().startswith("usage: sr-pipeline ")
    assert program_name("batch") == "sr-pipeline batch"
    monkeypatch.setattr(sys, "argv", ["run_pipeline.py"])
    assert build_parser().format_usage().startswith("usage: run_pipeline.py ")
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert program_name() == "run_pipeline.py"


# ------------------------------------------------------------------ CLI runs
@pytest.mark.integration
def test_batch_pattern_creates_output_folders_and_status_of_a_finished_output(tmp_path, ray_local):
    """The CLI's ``main`` in this process (the batch on the session's Ray)."""
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", 48, 64)
    out = tmp_path / "out" / "sub"
    pattern = str(out / "{stem}_x2.png")
    run = main_cli(
        "batch", src, "--output-pattern", pattern, "--scale", "2",
        "--report", tmp_path / "r.json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (out / "a_x2.png").is_file()
    status = main_cli("status", out / "a_x2.png")
    assert status.returncode == 0, status.stderr
    assert "is complete (no job store beside it" in status.stdout
    assert "error" not in status.stderr
    # A single run still refuses a folder that does not exist, and says what to do.
    single = main_cli(src / "a.png", "-o", tmp_path / "nope" / "a.png", "--scale", "2")
    assert single.returncode == 2 and "create it first" in single.stderr


@pytest.mark.integration
def test_ctrl_c_twice_exits_130_and_the_rerun_resumes(tmp_path):
    """SIGINT mid-upscale, then again at once: exit 130 with the one-line hint and no
    traceback (no ``release unlocked lock``); the store says interrupted; the rerun
    says how much it resumes and finishes."""
    from pipeline.cli.status import store_status

    src = _png(tmp_path / "in.png", 320, 400, seed=3)
    out = tmp_path / "out.tif"
    args = [src, "-o", out, "--scale", "2", "--tile", "32", "--overlap", "8", "--batch-size", "1"]
    args += ["--set", "store.region_out_px=64", "--set", "store.chunk_out_px=64"]
    proc = launch_cli(*args)
    sent = 0
    for line in proc.stderr:
        m = BAR.search(line)
        if m and int(m.group(1)) >= 10:
            sent = int(m.group(1))
            proc.send_signal(signal.SIGINT)
            time.sleep(0.1)  # in the tear-down (Ray's shutdown takes seconds)
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert sent, rest
    assert code == 130, rest
    assert "Traceback" not in rest and "release unlocked lock" not in rest, rest
    assert "interrupted again: still ending the job" in rest
    assert "interrupted; run the same command again to resume" in rest
    assert not out.exists()
    status = store_status(str(out) + ".job.zarr")
    assert status["state"] == "interrupted" and not status.get("error")
    assert status["regions_done"] >= sent

    again = main_cli(*args, *LOCAL_RUNNER)  # interrupted on Ray, resumed in-process
    assert again.returncode == 0, again.stderr
    m = re.search(r"resume: (\d+) of (\d+) regions done\n", again.stderr)
    assert m and int(m.group(1)) >= sent, again.stderr
    assert "\r" not in again.stderr  # a pipe (here a StringIO) gets plain lines
    assert "publish:" in again.stderr and out.is_file()
