"""Cohort slices: per-cohort metrics equal those of the cohort's events, with intervals against the baseline."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fxrec.metrics.ranking import ne
from fxrec.report.cohorts import cohort_slices


def test_slices_score_each_cohort_against_the_baseline():
    rng = np.random.default_rng(0)
    n = 600
    labels = (rng.random(n) < 0.3).astype(np.float32)
    surface = np.where(np.arange(n) % 3 == 0, "video", "feed")

    def frame(probs):
        return pl.DataFrame(
            {"event_id": np.arange(n), "user_id": np.arange(n) // 3, "surface": surface,
             "label_click": labels, "pred_click": probs.astype(np.float32)}
        )  # fmt: skip

    good = np.clip(0.25 + 0.4 * labels, 0, 1)
    frames = {"fm": frame(np.full(n, 0.3)), "vm": frame(good)}
    columns = pl.DataFrame({"event_id": np.arange(n), "age_bucket": np.arange(n) % 2})
    out = cohort_slices(frames, columns, "click", ["surface", "age_bucket"], "fm", resamples=50)
    rows = {(r["axis"], r["cohort"], r["model"]): r for r in out["rows"]}
    assert len(rows) == 2 * 2 + 2 * 2
    video = rows[("surface", "video", "vm")]
    mask = surface == "video"
    assert video["n_eval"] == mask.sum()
    assert video["ne"] == pytest.approx(ne(labels[mask], good[mask]), rel=1e-5)
    assert video["ne_change_low"] <= video["ne_change_pct"] <= video["ne_change_high"] < 0
    assert video["auc_difference"] > 0
    assert "ne_change_pct" not in rows[("surface", "video", "fm")]  # the baseline is not compared with itself
    with pytest.raises(ValueError, match="report.baseline"):
        cohort_slices(frames, columns, "click", ["surface"], "nope")
