"""The transfer experiment end to end on a tiny log: every row, ratios and the paired test."""

from __future__ import annotations

import math

import pytest


@pytest.mark.slow
def test_transfer_experiment_table(published_run, transfer_config, small_log):
    from fxrec.config import ExperimentConfig
    from fxrec.transfer.experiment import run_transfer_experiment

    config = transfer_config.model_copy(
        update={
            "experiment": ExperimentConfig(
                channel_sets={"none": [], "kd": ["kd"], "loopfm_kd": ["loopfm", "kd"], "exfm_aux_adapter": [{"name": "exfm", "adapter": True}]},
                seeds=[0, 1],
                delays=[1],
                delay_sets=["none", "kd"],
            )
        }
    )
    result = run_transfer_experiment(config, published_run, small_log)
    rows = {(r["channel_set"], r["delay"]): r for r in result["rows"]}
    assert set(rows) == {("none", 0), ("kd", 0), ("loopfm_kd", 0), ("exfm_aux_adapter", 0), ("none", 1), ("kd", 1)}
    assert rows[("none", 0)]["transfer_ratio"] in (0.0, None) or math.isclose(rows[("none", 0)]["transfer_ratio"], 0.0)
    assert 0 <= rows[("loopfm_kd", 0)]["p_vs_kd"] <= 1
    assert result["best"]["vm"]["channel_set"] in {"kd", "loopfm_kd", "exfm_aux_adapter"}
    assert all(r["n_eval"] == rows[("none", 0)]["n_eval"] for r in result["rows"])  # the same events everywhere
