"""Accumulators that turn a stream of (source, output) frames into the qc figures.

Each meter sees one frame at a time (``update``) and keeps only what the next frame needs
(the previous frames, for flicker) plus small per-frame and per-position sums, so a
two-hour film is measured in constant memory. ``result()`` gives a JSON-ready dict.
The bicubic upscale of the source is the reference every figure is relative to.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.qc import metrics

WORST = 5  # worst frames / seams listed
HEAT_CELLS = 128  # the seam heat map's longer side, in cells


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


class FlickerMeter:
    """Motion-compensated frame-to-frame change of the output over that of the reference."""

    def __init__(self, scale: int) -> None:
        self.scale = scale
        self.flow = metrics.FlowEstimator()
        self.prev: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.prev_index = -2
        self.frames: list[tuple[int, float, float, float, float]] = []  # idx, t, out, ref, valid

    def update(
        self, index: int, time_s: float, pair: metrics.FramePair, measure: bool = True
    ) -> None:
        """Frame ``index``; measured against the previous frame when that was ``index - 1``
        and ``measure``, else only kept as the previous frame."""
        src, out, ref = pair.src_grey, pair.out_grey, pair.ref_grey
        if measure and self.prev is not None and self.prev_index == index - 1:
            p_src, p_out, p_ref = self.prev
            back = self.flow(src, p_src)
            fwd = self.flow(p_src, src)
            mask = metrics.consistent_mask(back, fwd)
            flow_hr, mask_hr = metrics.upscale_flow(back, mask, self.scale)
            maps = metrics.warp_maps(flow_hr)
            e_out = metrics.warp_error(p_out, out, maps, mask_hr)
            e_ref = metrics.warp_error(p_ref, ref, maps, mask_hr)
            self.frames.append((index, time_s, e_out, e_ref, float(mask.mean())))
        self.prev, self.prev_index = (src, out, ref), index

    def series(self) -> list[tuple[int, float, float]]:
        """(frame, time_s, ratio) per measured frame; the reference error is floored so a
        still frame (reference error ~0) does not divide by zero."""
        return [(i, t, e_o / max(e_r, 1e-4)) for i, t, e_o, e_r, _ in self.frames if e_o == e_o]

    def result(self) -> dict | None:
        rows = [f for f in self.frames if f[2] == f[2] and f[3] == f[3]]
        if not rows:
            return None
        e_out = float(np.mean([r[2] for r in rows]))
        e_ref = float(np.mean([r[3] for r in rows]))
        worst = sorted(self.series(), key=lambda r: -r[2])[:WORST]
        return {
            "ratio": _finite(e_out / e_ref) if e_ref > 0 else None,
            "output_warp_error": _finite(e_out),
            "bicubic_warp_error": _finite(e_ref),
            "valid_fraction": _finite(float(np.mean([r[4] for r in rows]))),
            "pairs": len(rows),
            "worst": [{"frame": i, "time_s": _finite(t), "ratio": _finite(r)} for i, t, r in worst],
        }


class SeamMeter:
    """Gradient energy across the tile-overlap bands vs elsewhere, output over reference."""

    def __init__(self, src_hw: tuple[int, int], scale: int, tile_px: int, overlap_px: int) -> None:
        h, w = src_hw
        self.scale, self.tile_px, self.overlap_px = scale, tile_px, overlap_px
        self.x_spans = metrics.band_spans(w, tile_px, overlap_px, scale)
        self.y_spans = metrics.band_spans(h, tile_px, overlap_px, scale)
        self.x_in = metrics.band_gaps(self.x_spans, w * scale - 1)
        self.y_in = metrics.band_gaps(self.y_spans, h * scale - 1)
        self.cols = {"out": np.zeros(w * scale - 1), "ref": np.zeros(w * scale - 1)}
        self.rows = {"out": np.zeros(h * scale - 1), "ref": np.zeros(h * scale - 1)}
        cell = max(1, math.ceil(max(h, w) * scale / HEAT_CELLS))
        self.heat_hw = (max(1, h * scale // cell), max(1, w * scale // cell))
        self.heat = {"out": np.zeros(self.heat_hw), "ref": np.zeros(self.heat_hw)}

    def update(self, pair: metrics.FramePair) -> None:
        cv2 = metrics.cv2_module()
        for key, img in (("out", pair.out_grey), ("ref", pair.ref_grey)):
            dx2, dy2 = metrics.gradient_energy(img)
            self.cols[key] += dx2.sum(axis=0, dtype=np.float64)
            self.rows[key] += dy2.sum(axis=1, dtype=np.float64)
            both = dx2[:-1] + dy2[:, :-1]
            self.heat[key] += cv2.resize(both, self.heat_hw[::-1], interpolation=cv2.INTER_AREA)

    def heat_map(self) -> np.ndarray:
        """log2(output energy / reference energy) per cell (HxW float)."""
        return np.log2((self.heat["out"] + 1e-9) / (self.heat["ref"] + 1e-9))

    def _per_band(self) -> list[dict]:
        bands = []
        for axis, spans, prof, inside in (
            ("x", self.x_spans, self.cols, self.x_in),
            ("y", self.y_spans, self.rows, self.y_in),
        ):
            for a, b in spans:
                one = np.zeros_like(inside)
                one[max(a - 1, 0) : b] = True
                rest = ~inside
                r_out = prof["out"][one].mean() / max(prof["out"][rest].mean(), 1e-12)
                r_ref = prof["ref"][one].mean() / max(prof["ref"][rest].mean(), 1e-12)
                bands.append(
                    {
                        "axis": axis,  # x: a vertical seam at this column range
                        "output_px": [a, b],
                        "source_px": [a // self.scale, b // self.scale],
                        "ratio": _finite(r_out / r_ref) if r_ref > 0 else None,
                    }
                )
        return bands

    def result(self) -> dict:
        base = {"tile_px": self.tile_px, "overlap_px": self.overlap_px}
        if not self.x_spans and not self.y_spans:
            return {**base, "ratio": None, "bands": 0, "note": "one tile: no seams"}
        total = {k: np.concatenate([self.cols[k], self.rows[k]]) for k in ("out", "ref")}
        inside = np.concatenate([self.x_in, self.y_in])
        r_out = metrics.band_ratio(total["out"], inside)
        r_ref = metrics.band_ratio(total["ref"], inside)
        bands = self._per_band()
        worst = sorted(bands, key=lambda b: -(b["ratio"] or 0.0))[:WORST]
        return {
            **base,
            "ratio": _finite(r_out / r_ref),
            "output_band_ratio": _finite(r_out),
            "bicubic_band_ratio": _finite(r_ref),
            "bands": len(bands),
            "worst": worst,
        }


class FidelityMeter:
    """PSNR/SSIM of the output downscaled to the source size, against the source; the
    bicubic reference's own round trip is reported next to it as the ceiling to expect."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, float, float, float, float, float]] = []

    def update(self, index: int, time_s: float, pair: metrics.FramePair) -> None:
        src, g_src = pair.src, pair.src_grey
        self.frames.append(
            (
                index,
                time_s,
                metrics.psnr(pair.out_down, src),
                metrics.ssim(metrics.to_grey(pair.out_down), g_src),
                metrics.psnr(pair.ref_down, src),
                metrics.ssim(metrics.to_grey(pair.ref_down), g_src),
            )
        )

    def result(self) -> dict | None:
        if not self.frames:
            return None
        cols = list(zip(*self.frames, strict=True))

        def mean_db(values) -> float:
            finite = [min(v, 100.0) for v in values]  # identical frames: cap inf at 100 dB
            return float(np.mean(finite))

        worst = sorted(self.frames, key=lambda f: f[2])[:WORST]
        return {
            "psnr_db": _finite(mean_db(cols[2])),
            "ssim": _finite(float(np.mean(cols[3]))),
            "bicubic_psnr_db": _finite(mean_db(cols[4])),
            "bicubic_ssim": _finite(float(np.mean(cols[5]))),
            "worst": [
                {"frame": f[0], "time_s": _finite(f[1]), "psnr_db": _finite(min(f[2], 100.0))}
                for f in worst
            ],
        }
