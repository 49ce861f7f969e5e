"""The transfer experiment: choose on validation days, report on test days, ratio of mean NEs.

The first tests write hand-made predictions (each model's quality set per split of the days) and run
the experiment's evaluation on them, so the numbers it must report are known; the last one trains
every variant on a tiny log end to end.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import polars as pl
import pytest

from fxrec.config import ExperimentConfig, RunConfig, VMConfig
from fxrec.data.schema import DatasetSpec
from fxrec.jobs.experiment import evaluate_experiment, model_name
from fxrec.metrics import evaluate
from fxrec.transfer.ratio import FM_NOT_BETTER

DAYS = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]  # evaluation days; the last 2 are test
VALIDATION, TEST = DAYS[:2], DAYS[2:]
EVENTS_PER_DAY = 4000
SPEC = DatasetSpec(name="synthetic", features=[], surfaces=["feed"])

# Noise on the true logit, per model: (validation days, test days), one pair per seed. More noise,
# higher NE. kd wins on validation and loses on test, sum the other way round; seed 1's baseline
# sits close to the FM, so its per-seed ratio has a small denominator and the mean of per-seed
# ratios is far from the ratio of the mean NEs.
QUALITY = {
    "fm": [(0.3, 0.3)],
    "none": [(1.2, 1.2), (0.45, 0.45)],
    "kd": [(0.4, 1.0), (0.4, 0.3)],
    "sum": [(0.9, 0.6), (0.9, 0.35)],
}


def _write_predictions(directory, noise: tuple[float, float], seed: int) -> None:
    """One day=*.parquet per evaluation day: the same events and labels for every model."""
    directory.mkdir(parents=True)
    for index, day in enumerate(DAYS):
        world = np.random.default_rng(index)
        true_logit = world.normal(-2.0, 1.0, EVENTS_PER_DAY)
        labels = (world.random(EVENTS_PER_DAY) < 1 / (1 + np.exp(-true_logit))).astype(np.float32)
        sd = noise[0] if day in VALIDATION else noise[1]
        model = np.random.default_rng([seed, index, int(100 * sd)])
        predictions = 1 / (1 + np.exp(-(true_logit + sd * model.standard_normal(EVENTS_PER_DAY))))
        pl.DataFrame({
            "event_id": np.arange(EVENTS_PER_DAY) + index * EVENTS_PER_DAY,
            "user_id": np.arange(EVENTS_PER_DAY) % 97,
            "label_click": labels,
            "pred_click": predictions.astype(np.float32),
        }).write_parquet(directory / f"day={day}.parquet")


def _synthetic_run(tmp_path, tiny_fm_config, tiny_vm_args, quality: dict) -> tuple[RunConfig, object]:
    config = RunConfig(
        name="synthetic",
        simulator=None,
        events=str(tmp_path / "unused"),
        fm=tiny_fm_config,
        vms=[VMConfig(name="vm", **tiny_vm_args)],
        train={"report_days": None},
        experiment=ExperimentConfig(channel_sets={"none": [], "kd": ["kd"], "sum": ["sum"]}, seeds=[0, 1], test_days=2),
    )
    run = tmp_path / "run"
    _write_predictions(run / "models" / "fm" / "predictions", quality["fm"][0], seed=99)
    for name in ("none", "kd", "sum"):
        for seed in (0, 1):
            _write_predictions(run / "models" / model_name("vm", name, 0, seed) / "predictions", quality[name][seed], seed)
    return config, run


def _report_content(run, result: dict) -> dict:
    """What `evaluate_run` gives the report, with no model table, the FM's NE over time and `result`."""
    from fxrec.report.evaluate import ModelEntry, load_predictions
    from fxrec.report.periods import ne_over_time

    fm = load_predictions(ModelEntry("fm", "fm", None, [], run / "models" / "fm" / "predictions"))
    return {
        "dataset": "synthetic", "tasks": ["click"], "eval_days": DAYS, "models": [], "comparisons": [],
        "ne_over_time": ne_over_time({"fm": fm}, "click"), "transfer": result,
    }


def _ne_on(run, name: str, days: list[str]) -> float:
    """NE of one model's predictions on the given days, computed here from the files."""
    frame = pl.concat([pl.read_parquet(run / "models" / name / "predictions" / f"day={d}.parquet") for d in days])
    return evaluate(frame["label_click"].to_numpy(), frame["pred_click"].to_numpy())["ne"]


def _mean_ne(run, channel_set: str, days: list[str]) -> float:
    return float(np.mean([_ne_on(run, model_name("vm", channel_set, 0, s), days) for s in (0, 1)]))


def test_the_set_is_chosen_on_validation_days_and_reported_on_test_days(tmp_path, tiny_fm_config, tiny_vm_args):
    config, run = _synthetic_run(tmp_path, tiny_fm_config, tiny_vm_args, QUALITY)
    # The world is built so that the two splits disagree about the best set.
    assert _mean_ne(run, "kd", VALIDATION) < _mean_ne(run, "sum", VALIDATION)
    assert _mean_ne(run, "sum", TEST) < _mean_ne(run, "kd", TEST)

    result = evaluate_experiment(config, run, SPEC)

    assert (result["validation_days"], result["test_days"]) == (VALIDATION, TEST)
    assert result["best"]["vm"]["channel_set"] == "kd"  # the validation winner, not the test winner
    rows = {r["channel_set"]: r for r in result["rows"]}
    assert [name for name, r in rows.items() if r["selected"]] == ["kd"]
    for name, row in rows.items():  # every number is on the test days, the choice on validation days
        assert row["ne"] == pytest.approx(_mean_ne(run, name, TEST), rel=1e-9)
        assert row["ne_validation"] == pytest.approx(_mean_ne(run, name, VALIDATION), rel=1e-9)
        assert row["n_eval"] == len(TEST) * EVENTS_PER_DAY
        assert row["n_eval_validation"] == len(VALIDATION) * EVENTS_PER_DAY
        assert row["fm_ne"] == pytest.approx(_ne_on(run, "fm", TEST), rel=1e-9)
    chosen = result["best"]["vm"]
    assert chosen["ne"] == rows["kd"]["ne"] and chosen["transfer_ratio"] == rows["kd"]["transfer_ratio"]
    assert chosen["ne"] > rows["sum"]["ne"]  # the honest cost of choosing before seeing the test days


def test_transfer_ratio_is_the_ratio_of_mean_test_nes(tmp_path, tiny_fm_config, tiny_vm_args):
    config, run = _synthetic_run(tmp_path, tiny_fm_config, tiny_vm_args, QUALITY)
    result = evaluate_experiment(config, run, SPEC)
    rows = {r["channel_set"]: r for r in result["rows"]}
    fm = _ne_on(run, "fm", TEST)
    baseline = np.array(rows["none"]["ne_by_seed"])
    for name in ("kd", "sum"):
        row = rows[name]
        of_means = (baseline.mean() - row["ne"]) / (baseline.mean() - fm)
        of_ratios = np.mean((baseline - np.array(row["ne_by_seed"])) / (baseline - fm))
        assert abs(of_means - of_ratios) > 0.05  # the example tells the two apart
        assert row["transfer_ratio"] == pytest.approx(of_means, rel=1e-9)
        assert row["baseline_ne"] == pytest.approx(baseline.mean(), rel=1e-9)
    assert rows["none"]["transfer_ratio"] == 0.0


def test_ratio_is_undefined_when_the_fm_is_no_better_on_test_days(tmp_path, tiny_fm_config, tiny_vm_args):
    from fxrec.report.render import transfer_ratio_plot, write_report

    # The FM is good on validation days and worse than every VM on test days.
    config, run = _synthetic_run(tmp_path, tiny_fm_config, tiny_vm_args, {**QUALITY, "fm": [(0.3, 2.5)]})
    result = evaluate_experiment(config, run, SPEC)
    for row in result["rows"]:
        assert row["transfer_ratio"] is None and row["transfer_ratio_low"] is None
        assert row["transfer_ratio_reason"] == FM_NOT_BETTER
    assert result["best"]["vm"]["transfer_ratio_reason"] == FM_NOT_BETTER
    content = _report_content(run, result)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no empty axes, no "no artists" legend warning
        assert transfer_ratio_plot(result["rows"]) is None
        _, html_path = write_report(content, tmp_path / "report.json", tmp_path / "report.html", title="synthetic")
    html = html_path.read_text()
    assert FM_NOT_BETTER in html
    assert "transfer ratio per channel set" not in html  # the note stands in for the plot


def test_report_names_validation_and_test_days_and_marks_the_chosen_set(tmp_path, tiny_fm_config, tiny_vm_args):
    import json

    from fxrec.report.render import write_report

    config, run = _synthetic_run(tmp_path, tiny_fm_config, tiny_vm_args, QUALITY)
    result = evaluate_experiment(config, run, SPEC)
    content = _report_content(run, result)
    json_path, html_path = write_report(content, tmp_path / "report.json", tmp_path / "report.html", title="synthetic")
    saved = json.loads(json_path.read_text())["transfer"]
    assert (saved["validation_days"], saved["test_days"]) == (VALIDATION, TEST)
    assert [r["channel_set"] for r in saved["rows"] if r["selected"]] == ["kd"]
    html = html_path.read_text()
    assert f"<b>Validation days</b> {VALIDATION[0]} to {VALIDATION[-1]}" in html
    assert f"<b>Test days</b> {TEST[0]} to {TEST[-1]}" in html
    assert html.count("✓ chosen") == 1
    assert "transfer ratio per channel set" in html


@pytest.mark.slow
def test_transfer_experiment_table(published_run, transfer_config, small_log):
    from fxrec.jobs.experiment import run_transfer_experiment

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
    validation, test = result["validation_days"], result["test_days"]
    assert validation and test and max(validation) < min(test)
    assert sorted(validation + test) == result["eval_days"]
    none = rows[("none", 0)]
    assert none["transfer_ratio"] is None or math.isclose(none["transfer_ratio"], 0.0, abs_tol=1e-12)
    assert 0 <= rows[("loopfm_kd", 0)]["p_vs_kd"] <= 1
    chosen = [r for r in result["rows"] if r["selected"]]
    assert len(chosen) == 1 and chosen[0]["delay"] == 0
    assert chosen[0]["ne_validation"] == min(r["ne_validation"] for r in result["rows"] if r["delay"] == 0)
    assert result["best"]["vm"]["channel_set"] == chosen[0]["channel_set"]
    assert all(r["n_eval"] == none["n_eval"] for r in result["rows"])  # the same test events everywhere
