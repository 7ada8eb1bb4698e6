"""``qc``: flicker, seams and fidelity read ~1 on a bicubic upscale and clearly off on
outputs broken on purpose (per-frame noise, a visible tile grid, shuffled frames).

The clips are a blurred random texture translating 2 px right and 1 px down per frame,
so optical flow has real motion to find; the "good" output is the torch bicubic upscale
(the pipeline's bicubic model) of the source frames, encoded like the source.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.pure.tiling import tile_starts
from pipeline.qc import metrics
from pipeline.qc.measure import QcOptions, detect_scale, measure
from tests.helpers import assert_one_line_error, bicubic_reference, run_cli

SCALE = 2
TILE, OVERLAP = 32, 8  # LR px: 3 x 2 tiles on the 96x64 clip
OPTS = QcOptions(tile_px=TILE, overlap_px=OVERLAP)


def texture_frames(n: int = 12, h: int = 64, w: int = 96) -> list[np.ndarray]:
    """HxWx3 uint8 crops of one blurred-noise texture, moving (2, 1) px per frame."""
    cv2 = metrics.cv2_module()
    rng = np.random.default_rng(0)
    big = rng.random((h + n + 8, w + 2 * n + 8, 3)).astype(np.float32)
    big = cv2.GaussianBlur(big, (0, 0), 1.5)
    big = np.rint((big - big.min()) / (big.max() - big.min()) * 255).astype(np.uint8)
    return [np.ascontiguousarray(big[i : i + h, 2 * i : 2 * i + w]) for i in range(n)]


def write_clip(path: Path, frames: list[np.ndarray], rate: int = 24) -> Path:
    """H.264 4:4:4 at a low CRF (near-lossless), so the figures show the content."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(rate))
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv444p"
        s.options = {"crf": "4"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def with_grid(image: np.ndarray, h_lr: int, w_lr: int) -> np.ndarray:
    """Darken one line per tile-overlap band (the middle of it): a visible tile grid."""
    g = image.astype(np.float32)
    for a, b in metrics.band_spans(w_lr, TILE, OVERLAP, SCALE):
        g[:, (a + b) // 2] *= 0.8
    for a, b in metrics.band_spans(h_lr, TILE, OVERLAP, SCALE):
        g[(a + b) // 2, :] *= 0.8
    return g.astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("qc")
    src = texture_frames()
    up = [bicubic_reference(f, SCALE) for f in src]
    rng = np.random.default_rng(1)
    noisy = [np.clip(u + rng.normal(0, 8, u.shape), 0, 255).astype(np.uint8) for u in up]
    order = [0, 5, 2, 9, 4, 1, 11, 7, 3, 10, 6, 8]
    return {
        "source": write_clip(d / "source.mp4", src),
        "bicubic": write_clip(d / "bicubic.mp4", up),
        "noise": write_clip(d / "noise.mp4", noisy),
        "grid": write_clip(d / "grid.mp4", [with_grid(u, 64, 96) for u in up]),
        "shuffled": write_clip(d / "shuffled.mp4", [up[i] for i in order]),
    }


@pytest.fixture(scope="module")
def reports(clips) -> dict[str, dict]:
    return {k: measure(clips["source"], p, OPTS)[0] for k, p in clips.items() if k != "source"}


# ------------------------------------------------------------------------------ unit
@pytest.mark.unit
def test_bicubic_reads_as_the_source(reports):
    r = reports["bicubic"]
    assert r["kind"] == "video" and r["scale"] == SCALE and r["frames"] == 12
    assert 0.8 < r["flicker"]["ratio"] < 1.25
    assert r["flicker"]["valid_fraction"] > 0.8  # the flow found the motion
    assert 0.9 < r["seams"]["ratio"] < 1.1
    assert r["fidelity"]["psnr_db"] > 38 and r["fidelity"]["ssim"] > 0.97


@pytest.mark.unit
def test_per_frame_noise_reads_as_flicker(reports):
    assert reports["noise"]["flicker"]["ratio"] > 5 * reports["bicubic"]["flicker"]["ratio"]


@pytest.mark.unit
def test_tile_grid_reads_as_seams(reports):
    grid, bic = reports["grid"]["seams"], reports["bicubic"]["seams"]
    assert grid["ratio"] > 1.8 * bic["ratio"]
    # every band is listed among the bands, and the worst ones are real band positions
    assert grid["bands"] == 5  # x starts 0, 24, 48, 64 (3 bands); y 0, 24, 32 (2)
    spans = {tuple(b["output_px"]) for b in grid["worst"]}
    assert all(s[0] % SCALE == 0 for s in spans)
    assert all(b["ratio"] > 1.5 for b in grid["worst"])


@pytest.mark.unit
def test_shuffled_frames_fail_fidelity_and_flicker(reports):
    shuf, bic = reports["shuffled"], reports["bicubic"]
    assert shuf["fidelity"]["psnr_db"] < bic["fidelity"]["psnr_db"] - 15
    assert shuf["fidelity"]["ssim"] < 0.6
    assert shuf["flicker"]["ratio"] > 10
    assert shuf["fidelity"]["worst"][0]["frame"] != 0  # frame 0 stayed in place


@pytest.mark.unit
def test_worst_frames_carry_index_and_time(reports):
    worst = reports["noise"]["flicker"]["worst"]
    assert worst and all(1 <= w["frame"] < 12 for w in worst)
    assert all(w["time_s"] == pytest.approx(w["frame"] / 24, abs=1e-3) for w in worst)


@pytest.mark.unit
def test_bands_follow_the_job_grid():
    starts, tile = tile_starts(96, TILE, OVERLAP)
    spans = metrics.band_spans(96, TILE, OVERLAP, SCALE)
    assert spans == [
        (b * SCALE, (a + tile) * SCALE) for a, b in zip(starts[:-1], starts[1:], strict=True)
    ]
    assert metrics.band_spans(20, TILE, OVERLAP, SCALE) == []  # one tile, no seam


@pytest.mark.unit
def test_psnr_ssim_basics():
    a = metrics.to_float(texture_frames(1)[0])
    g = metrics.to_grey(a)
    assert metrics.psnr(a, a) == float("inf")
    assert metrics.ssim(g, g) == pytest.approx(1.0, abs=1e-4)
    noisy = np.clip(g + np.random.default_rng(0).normal(0, 0.1, g.shape), 0, 1)
    assert metrics.ssim(g, noisy.astype(np.float32)) < 0.8


@pytest.mark.unit
def test_scale_detection():
    assert detect_scale((64, 96), (256, 384)) == 4
    for out in ((128, 190), (128, 288), (63, 96)):
        with pytest.raises(UserError, match="not an integer upscale"):
            detect_scale((64, 96), out)


@pytest.mark.unit
def test_images_seams_and_orientation(tmp_path):
    from PIL import Image

    src = texture_frames(1, 96, 128)[0]
    up = bicubic_reference(src, SCALE)
    paths = {}
    for name, img in {
        "src": src,
        "bic": up,
        "grid": with_grid(up, 96, 128),
        "flipped": np.ascontiguousarray(up[::-1]),
    }.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(img).save(paths[name])
    bic = measure(paths["src"], paths["bic"], OPTS)[0]
    grid = measure(paths["src"], paths["grid"], OPTS)[0]
    flipped = measure(paths["src"], paths["flipped"], OPTS)[0]
    assert bic["kind"] == "image" and bic["flicker"] is None
    assert 0.9 < bic["seams"]["ratio"] < 1.1
    assert grid["seams"]["ratio"] > 1.8
    assert flipped["fidelity"]["psnr_db"] < bic["fidelity"]["psnr_db"] - 15


# integration: matplotlib builds its font cache on a user's first import of pyplot, and
# that runs fc-list in a subprocess (the suite's user is always a first-time user).
@pytest.mark.integration
def test_plots_are_written(clips, tmp_path):
    from pipeline.qc.report import table, write_plots

    report, plots = measure(clips["source"], clips["grid"], OPTS)
    written = write_plots(plots, tmp_path / "plots")
    assert {p.name for p in written} == {"flicker.png", "seams.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    text = table(report)
    assert "flicker" in text and "seams" in text and "PSNR" in text


# ----------------------------------------------------------------------- integration
@pytest.mark.integration
def test_cli_json_and_errors(clips, tmp_path):
    r = run_cli(
        "qc", clips["source"], clips["bicubic"], "--json", "--tile", TILE, "--overlap", OVERLAP
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert any("flicker" in k for k in report)
    assert 0.8 < report["flicker"]["ratio"] < 1.25
    table = run_cli("qc", clips["source"], clips["noise"], "--plots", tmp_path / "p")
    assert table.returncode == 0, table.stderr
    assert "flicker" in table.stdout and (tmp_path / "p" / "seams.png").is_file()
    # a source is not an upscale of its upscale: one line, exit 2
    bad = run_cli("qc", clips["bicubic"], clips["source"])
    assert_one_line_error(bad, 2, "not an integer upscale")
    missing = run_cli("qc", tmp_path / "nope.mp4", clips["source"])
    assert_one_line_error(missing, 2, "no such file")


@pytest.mark.unit
def test_frame_count_mismatch_and_kind_mismatch(clips, tmp_path):
    up = [bicubic_reference(f, SCALE) for f in texture_frames()]
    short = write_clip(tmp_path / "short.mp4", up[:8])
    report = measure(clips["source"], short, OPTS)[0]
    assert report["frames"] == 8 and report["frame_counts_differ"] is True
    assert report["longer"] == "source"
    assert measure(clips["source"], clips["bicubic"], OPTS)[0]["frame_counts_differ"] is False
    from PIL import Image

    png = tmp_path / "still.png"
    Image.fromarray(up[0]).save(png)
    with pytest.raises(UserError, match="one is an image, the other a video"):
        measure(clips["source"], png, OPTS)


@pytest.mark.unit
def test_stride_measures_a_sample_of_pairs(clips):
    opts = QcOptions(tile_px=TILE, overlap_px=OVERLAP, stride=3)
    noise = measure(clips["source"], clips["noise"], opts)[0]
    assert noise["frames"] == 12 and noise["stride"] == 3
    assert noise["flicker"]["pairs"] == 3  # (2, 3), (5, 6), (8, 9)
    assert sorted(w["frame"] for w in noise["flicker"]["worst"]) == [3, 6, 9]
    assert noise["flicker"]["ratio"] > 5
    bic = measure(clips["source"], clips["bicubic"], opts)[0]
    assert 0.8 < bic["flicker"]["ratio"] < 1.25
