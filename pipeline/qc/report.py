"""The qc report as a short table, and its optional PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _fmt(x, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.4g}{unit}" if isinstance(x, float) else f"{x}{unit}"


def table(report: dict) -> str:
    """A few lines a person reads: each figure, its bicubic baseline, the worst places."""
    w, h = report["source_size"]
    ow, oh = report["output_size"]
    lines = [
        f"qc {report['kind']}: {w}x{h} -> {ow}x{oh} (x{report['scale']}), "
        f"{report['frames']} frame(s), {report['fps']} fps"
        + (f", every {report['stride']}th pair measured" if report.get("stride", 1) > 1 else ""),
    ]
    fl = report.get("flicker")
    if fl:
        worst = ", ".join(f"#{r['frame']} @{r['time_s']}s {r['ratio']}" for r in fl["worst"][:3])
        lines.append(
            f"  flicker  {_fmt(fl['ratio'])}  (warp error {_fmt(fl['output_warp_error'])} vs "
            f"bicubic {_fmt(fl['bicubic_warp_error'])}; 1.0 = as stable as the source) "
            f"worst: {worst}"
        )
    sm = report["seams"]
    if sm.get("ratio") is None:
        lines.append(f"  seams    n/a  ({sm.get('note', 'no bands')})")
    else:
        worst = ", ".join(
            f"{b['axis']}={b['output_px'][0]}-{b['output_px'][1]} {b['ratio']}"
            for b in sm["worst"][:3]
        )
        lines.append(
            f"  seams    {_fmt(sm['ratio'])}  (tile {sm['tile_px']}/{sm['overlap_px']} LR px, "
            f"{sm['bands']} bands; 1.0 = like bicubic) worst: {worst}"
        )
    fd = report["fidelity"]
    worst = ", ".join(f"#{r['frame']} {r['psnr_db']} dB" for r in fd["worst"][:3])
    lines.append(
        f"  fidelity PSNR {_fmt(fd['psnr_db'], ' dB')} SSIM {_fmt(fd['ssim'])}  (bicubic "
        f"{_fmt(fd['bicubic_psnr_db'], ' dB')} / {_fmt(fd['bicubic_ssim'])})"
        + (f" worst: {worst}" if report["kind"] == "video" else "")
    )
    if report.get("frame_counts_differ"):
        lines.append(
            f"  warning: frame counts differ ({report['longer']} is longer); "
            f"compared the first {report['frames']}"
        )
    return "\n".join(lines)


def write_plots(plots: dict, directory: Path) -> list[Path]:
    """flicker.png (per-frame ratio over time, video only) and seams.png (heat map of
    output/bicubic gradient energy with the tile-overlap bands outlined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    series = plots["flicker_series"]
    if series:
        fig, ax = plt.subplots(figsize=(10, 3))
        t = [s[1] if s[1] == s[1] else s[0] for s in series]
        ax.plot(t, [s[2] for s in series], lw=0.8)
        ax.axhline(1.0, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("warp error / bicubic")
        ax.set_title("flicker per frame (1.0 = as stable as the source)")
        fig.tight_layout()
        written.append(directory / "flicker.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    heat = plots["heat_map"]
    oh, ow = plots["output_hw"]
    fig, ax = plt.subplots(figsize=(8, 8 * oh / max(ow, 1) + 0.5))
    lim = max(1.0, float(np.nanpercentile(np.abs(heat), 99)))
    im = ax.imshow(
        heat, cmap="coolwarm", vmin=-lim, vmax=lim, extent=(0, ow, oh, 0), interpolation="nearest"
    )
    for a, b in plots["x_spans"]:
        ax.axvspan(a, b, color="k", alpha=0.12, lw=0)
    for a, b in plots["y_spans"]:
        ax.axhspan(a, b, color="k", alpha=0.12, lw=0)
    fig.colorbar(im, ax=ax, label="log2(output / bicubic gradient energy)")
    ax.set_title("seam heat map (shaded: tile-overlap bands)")
    fig.tight_layout()
    written.append(directory / "seams.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
