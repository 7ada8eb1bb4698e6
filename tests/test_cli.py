"""The command line as a user runs it: a real subprocess with the local Ray the CLI starts
for the end-to-end run, a kill and the no-traceback check; the CLI's ``main(argv)`` in this
process (``main_cli``) for what the CLI decides and prints before or without Ray."""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.helpers import (
    LOCAL_RUNNER,
    ROOT,
    assert_one_line_error,
    launch_cli,
    main_cli,
    run_cli,
)


def fresh_env(tmp_path, **extra):
    """This environment without any S3Diff weights in reach (a fresh machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "S3DIFF_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"), **extra)
    return env


def use_fresh_env(monkeypatch, tmp_path, **extra) -> None:
    """``fresh_env`` for this process (the CLI's ``main`` run in-process)."""
    for key in [k for k in os.environ if k.startswith(("HF_", "S3DIFF_"))]:
        monkeypatch.delenv(key)
    extra = {"HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}
    for key, value in extra.items():
        monkeypatch.setenv(key, value)


@pytest.mark.integration
def test_sample_then_upscale_end_to_end(tmp_path):
    sample = tmp_path / "sample.png"
    made = main_cli("sample", sample, "--size", "300x200")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out.tif"
    run = run_cli(
        sample,
        "-o",
        out,
        "--scale",
        "2",
        "--tile",
        "128",
        "--overlap",
        "16",
        "--set",
        "store.region_out_px=256",
        env=fresh_env(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    assert "model: bicubic (for S3Diff: 'run_pipeline.py weights download'" in run.stderr
    assert "done in" in run.stdout and str(out) in run.stdout
    assert "upscale" in run.stderr and "region" in run.stderr  # progress bar and stages
    assert tifffile.imread(out).shape == (400, 600, 3)
    assert not (tmp_path / "out.tif.job.zarr").exists()  # store removed after success
    assert not list(tmp_path.glob(".out.partial*"))


@pytest.mark.integration
def test_bad_inputs_give_one_line_errors_and_touch_nothing(tmp_path):
    png = tmp_path / "in.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(png)
    existing = tmp_path / "existing.tif"
    existing.write_bytes(b"precious")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text_mp4 = tmp_path / "movie.mp4"
    text_mp4.write_text("hello")
    # The one subprocess: a refusal as a user meets it, one line, no traceback. The
    # others are the same code path, run in this process.
    assert_one_line_error(
        run_cli(tmp_path / "nope.png", "-o", tmp_path / "o.tif"), 2, "does not exist"
    )
    assert_one_line_error(main_cli(png, "-o", existing), 2, "already exists; pass --overwrite")
    assert existing.read_bytes() == b"precious"
    assert_one_line_error(main_cli(empty, "-o", tmp_path / "o.tif"), 2, "is empty (0 bytes)")
    assert_one_line_error(main_cli(text_mp4, "-o", tmp_path / "o.tif"), 2, "not a supported input")
    assert_one_line_error(
        main_cli(png, "-o", png, "--overwrite"), 2, "the output path is the input path"
    )
    assert_one_line_error(
        main_cli(png, "-o", tmp_path / "missing" / "o.tif"), 2, "output directory"
    )
    assert_one_line_error(
        main_cli(png, "-o", tmp_path / "o.tif", "--set", "tiling.bogus=1"),
        2,
        "unknown config key tiling.bogus",
    )
    assert_one_line_error(
        main_cli(png, "-o", tmp_path / "o.tif", "--tile", "64", "--overlap", "64"),
        2,
        "must be smaller than --tile",
    )
    assert_one_line_error(
        main_cli(png, "-o", tmp_path / "o.tif", "--config", tmp_path / "x.yaml"),
        2,
        "does not exist",
    )
    bomb = tmp_path / "bomb.png"  # header claims 100000x100000; no pixel data
    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + header
        + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    )
    assert_one_line_error(main_cli(bomb, "-o", tmp_path / "o.tif"), 2, "over the 2048 MiB limit")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bomb.png",
        "empty.png",
        "existing.tif",
        "in.png",
        "movie.mp4",
    ]
    debug = run_cli(png, "-o", existing, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.integration
def test_default_model_is_s3diff_when_its_weights_are_found(tmp_path, monkeypatch):
    png = tmp_path / "in.png"
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(png)
    weights = ROOT / "tests" / "data" / "golden" / "weights"
    use_fresh_env(monkeypatch, tmp_path, S3DIFF_WEIGHTS=str(weights))
    run = main_cli(png, "-o", tmp_path / "o.png", *LOCAL_RUNNER)
    assert run.returncode == 0, run.stderr
    assert f"model: s3diff (weights: {weights};" in run.stderr
    chosen = main_cli(png, "-o", tmp_path / "b.png", "--model", "bicubic", *LOCAL_RUNNER)
    assert chosen.returncode == 0 and "model: " not in chosen.stderr, chosen.stderr


@pytest.mark.integration  # a fresh interpreter: this one has torch imported already
def test_driver_package_does_not_import_torch():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "pipeline").rglob("*.py")
    ) + ["workers.region_worker", "workers.s3diff.locations"]  # the latter: find_weights
    code = (
        "import sys\n"
        f"for m in {modules!r}: __import__(m)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_killed_driver_leaves_no_ray_processes(tmp_path):
    """Invariant 8: SIGKILL of the CLI takes its local Ray (agents included) with it."""
    import os
    import signal
    import time

    import psutil

    src = tmp_path / "big.tif"
    tifffile.imwrite(src, np.zeros((3000, 3000, 3), np.uint8), tile=(256, 256), photometric="rgb")
    proc = launch_cli(
        src,
        "-o",
        tmp_path / "o.tif",
        "--scale",
        "4",
        "--tile",
        "64",
        "--overlap",
        "8",
        "--set",
        "run.region_retries=0",
        stdout=subprocess.DEVNULL,
    )
    for line in proc.stderr:  # wait until actors are working
        if line.startswith("upscale:"):
            break
    time.sleep(1.0)
    family = psutil.Process(proc.pid).children(recursive=True)
    ray_procs = [p for p in family if "reaper" not in " ".join(p.cmdline())]
    assert any("raylet" in " ".join(p.cmdline()) for p in ray_procs), "no local Ray found"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(ray_procs, timeout=30)
    assert not alive, [" ".join(p.cmdline())[:80] for p in alive]
    assert (tmp_path / "o.tif.job.zarr").exists()  # the store stays for a resume
    assert not (tmp_path / "o.tif").exists()  # no output that looks finished


@pytest.mark.integration
def test_video_through_the_cli(tmp_path):
    from tests.video_fixtures import make_clip, probe_summary

    src = make_clip(tmp_path / "clip.mp4", frames=12)
    out = tmp_path / "clip_x2.mkv"
    run = main_cli(  # the CLI's video options; video on Ray: tests/test_video.py
        src,
        "-o",
        out,
        "--scale",
        "2",
        "--tile",
        "32",
        "--overlap",
        "8",
        "--codec",
        "libx265",
        "--crf",
        "20",
        "--preset",
        "fast",
        *LOCAL_RUNNER,
    )
    assert run.returncode == 0, run.stderr
    assert "12 frames" in run.stdout
    video = [s for s in probe_summary(out)["streams"] if s["type"] == "video"][0]
    assert (video["packets"], video["width"], video["codec"]) == (12, 192, "hevc")
    bad = main_cli(src, "-o", tmp_path / "x.mp4", "--frames", "9:3")
    assert_one_line_error(bad, 2, "the selected range holds no frames")
    image_out = main_cli(src, "-o", tmp_path / "x.png")
    assert_one_line_error(image_out, 2, "is a video; give a video output")
