"""`fxrec cohorts`: C2AL's cohort discovery on a trained model's predictions, from the command line."""

from __future__ import annotations

import numpy as np
import polars as pl
import yaml
from typer.testing import CliRunner

from fxrec.cli import app
from fxrec.metrics.cohorts import cohort_divergences
from fxrec.objectives.c2al import CohortAuxiliary

AXES = ["surface", "age_bucket", "advertiser_size"]


def _invoke(*args: str):
    return CliRunner().invoke(app, ["cohorts", *args])


def test_cohorts_prints_every_axis_and_the_most_divergent_pair_as_c2al(served_run, small_log):
    result = _invoke("--run", str(served_run), "--model", "fm", "--axes", ",".join(AXES))
    assert result.exit_code == 0, result.output
    for axis in AXES:
        assert f"axis {axis}" in result.output
    block = yaml.safe_load(result.output[result.output.index("c2al:") :])["c2al"]
    chosen = CohortAuxiliary(**block)
    assert chosen.task == "click" and chosen.tasks == {"click_c2al_head": 0.5, "click_c2al_tail": 0.5}

    # the same divergences by hand: the FM's predictions joined with the log's columns
    files = sorted((served_run / "models" / "fm" / "predictions").glob("day=*.parquet"))
    predictions = pl.concat([pl.read_parquet(f).select("event_id", "pred_click") for f in files])
    days = [f.stem.removeprefix("day=") for f in files]
    log = pl.concat(
        [
            pl.from_arrow(small_log.read_day(d, ["event_id", "surface", "age_bucket", "advertiser_id"]))
            for d in days
        ]
    )
    joined = predictions.join(log, on="event_id")
    columns = {c: joined[c].to_numpy() for c in ("surface", "age_bucket", "advertiser_id")}
    divergences = cohort_divergences(joined["pred_click"].to_numpy().astype(np.float64), columns, AXES)
    a, b, js = divergences.most_divergent()
    assert {chosen.head.label, chosen.tail.label} == {a.label, b.label}
    assert divergences.sizes[chosen.head.label] >= divergences.sizes[chosen.tail.label]
    assert f"{js:.5f}" in result.output


def test_cohorts_rejects_unknown_axes_and_models(served_run):
    result = _invoke("--run", str(served_run), "--model", "fm", "--axes", "surface,no_such_column")
    assert result.exit_code == 2 and "no_such_column" in result.output, result.output
    result = _invoke("--run", str(served_run), "--model", "fm", "--axes", "age_bucket:1")
    assert result.exit_code == 2 and "age_bucket:1" in result.output, result.output
    result = _invoke("--run", str(served_run), "--model", "nope")
    assert result.exit_code == 2 and "'nope'" in result.output and "fm" in result.output, result.output
    result = _invoke("--run", str(served_run), "--model", "fm", "--task", "dwell")
    assert result.exit_code == 2 and "dwell" in result.output, result.output
