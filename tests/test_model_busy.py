"""'Model busy': the share of the region workers' time spent in the model, from the
timings each region reports (pipeline/store/progress.py)."""

import pytest

from pipeline.results import busy_text
from pipeline.store.progress import ModelBusy


def _region(worker, started, ended, model_s):
    return {"worker": worker, "started": started, "ended": ended, "model_s": model_s}


@pytest.mark.unit
def test_busy_is_model_seconds_over_each_workers_span():
    busy = ModelBusy()
    assert busy.fraction() is None and busy_text(None) == ""
    # Worker a: two overlapping regions (read-ahead, write-behind), 10 s span, 8 s model.
    busy.record(_region("a", 100.0, 106.0, 5.0))
    busy.record(_region("a", 104.0, 110.0, 3.0))
    # Worker b: one region, 4 s span, 1 s model: it waited.
    busy.record(_region("b", 200.0, 204.0, 1.0))
    busy.record({"frames": 3})  # an estimate's result carries no timings: ignored
    assert busy.per_worker() == pytest.approx({"a": 0.8, "b": 0.25})
    assert busy.fraction() == pytest.approx(9.0 / 14.0)
    assert busy_text(busy.fraction()) == "model busy 64%"
