"""Sample values <-> the model's [0, 1]: the range each stored dtype is normalised by.

Pure functions shared by the region worker (normalise a halo, write the blend back in
the store's dtype) and the plan (which dtypes a model can take without a user range).
Unsigned samples span [0, max of the type]; signed ones the whole type; float samples
have no natural range, so without ``model.value_range`` they pass through unchanged
and unclipped (only models that work in any range, like bicubic, take them).
"""

from __future__ import annotations

import numpy as np


def has_natural_range(dtype: str) -> bool:
    """Unsigned samples: [0, max] is their display range (what S3Diff expects)."""
    return np.dtype(dtype).kind == "u"


def sample_range(
    dtype: str, value_range: tuple[float, float] | None = None
) -> tuple[float, float, bool]:
    """(low, span, bounded): sample = low + span * unit; ``bounded``: clip unit to [0, 1]."""
    if value_range is not None:
        lo, hi = value_range
        return float(lo), float(hi) - float(lo), True
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return float(info.min), float(info.max) - float(info.min), True
    return 0.0, 1.0, False


def to_unit(samples: np.ndarray, low: float, span: float) -> np.ndarray:
    """Stored samples (any shape) -> float32 in the model's units."""
    return (samples.astype(np.float32) - np.float32(low)) / np.float32(span)


def from_unit(unit: np.ndarray, dtype: str, low: float, span: float, bounded: bool) -> np.ndarray:
    """float32 model units -> samples of ``dtype`` (rounded and clipped for integers)."""
    if bounded:
        unit = np.clip(unit, 0.0, 1.0)
    values = unit * np.float32(span) + np.float32(low) if (low, span) != (0.0, 1.0) else unit
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return np.clip(np.rint(values), info.min, info.max).astype(dt)
    return values.astype(dt)
