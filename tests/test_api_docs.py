"""docs/API.md's examples, run as written on tiny inputs made here (issue 24).

Every ``python`` block runs, in order, in one scratch folder: a block under
``<!-- file: NAME -->`` is written to NAME and run as a script (``__main__``), the others
are executed as notebook cells. Only a block under ``<!-- not run: ... -->`` is skipped,
and the test names the ones it expects, so an example cannot drop out silently. They run
on the session's already-initialised Ray, as in a notebook attached to a cluster."""

from __future__ import annotations

import json
import re
import runpy
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.helpers import ROOT, bicubic_reference, synth_image
from tests.test_video import assert_video_preserved
from tests.video_fixtures import make_clip

pytestmark = pytest.mark.integration
BLOCK = re.compile(r"(?:<!-- (file|not run): ?([^>]*?) ?-->\n)?```python\n(.*?)```", re.S)


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(kind, note, code) of each python block: kind is file, not run, or cell."""
    return [(kind or "cell", note, code) for kind, note, code in BLOCK.findall(text)]


def test_the_api_examples_run_as_written(tmp_path, monkeypatch, ray_local, capsys):
    found = blocks((ROOT / "docs" / "API.md").read_text())
    kinds = [kind for kind, _, _ in found]
    assert kinds == ["cell", "cell", "cell", "file", "not run"], kinds
    assert found[-1][1] == "needs Airflow"

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the DAG imports the script by name
    scan = synth_image(48, 64, seed=1)
    Image.fromarray(scan).save("scan.png")
    make_clip(tmp_path / "clip.mp4", frames=8, gop=4)
    Path("shots").mkdir()
    for name, seed in (("a", 2), ("b", 3)):
        Image.fromarray(synth_image(40, 56, seed=seed)).save(f"shots/{name}.png")
    make_clip(tmp_path / "shots" / "c.mp4", frames=8, gop=4)
    Path("incoming").mkdir()
    for name, seed in (("n1", 4), ("n2", 5)):
        Image.fromarray(synth_image(32, 48, seed=seed)).save(f"incoming/{name}.png")

    previous = signal.getsignal(signal.SIGTERM)  # the script installs its own
    try:
        for kind, note, code in found:
            if kind == "cell":
                exec(compile(code, "docs/API.md", "exec"), {"__name__": "__notebook__"})
            elif kind == "file":
                Path(note).write_text(code)
                with pytest.raises(SystemExit) as exited:
                    runpy.run_path(note, run_name="__main__")
                assert exited.value.code == 0
        # The scheduled job again: its outputs are there, so it skips them.
        with pytest.raises(SystemExit) as again:
            runpy.run_path("nightly_upscale.py", run_name="__main__")
        assert again.value.code == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.modules.pop("nightly_upscale", None)
    printed = capsys.readouterr().out

    # The notebook: the output and its summary line.
    want = bicubic_reference(scan, 2).astype(int)
    np.testing.assert_allclose(tifffile.imread("scan_x2.tif").astype(int), want, atol=1)
    assert "done in " in printed and f"-> {tmp_path / 'scan_x2.tif'}" in printed
    # The cancelled clip, resumed.
    assert "cancelled; the job store is kept" in printed and "8 frames," in printed
    assert_video_preserved(tmp_path / "clip.mp4", tmp_path / "clip_x2.mp4")
    # The batch from a list.
    assert Path("report.json").is_file() and "3 done" in printed
    for name in ("a", "b"):
        assert tifffile.imread(f"out/{name}_x2.tif").shape == (80, 112, 3)
    assert_video_preserved(tmp_path / "shots" / "c.mp4", tmp_path / "out" / "c_x2.mp4")
    # The scheduled job: its outputs; the second run skipped them.
    assert sorted(p.name for p in Path("done").iterdir()) == ["n1_x2.tif", "n2_x2.tif"]
    assert json.loads(Path("nightly.report.json").read_text())["counts"] == {"skipped": 2}
