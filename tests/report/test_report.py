"""report.json and report.html on logs shaped like real ones: long, with near-empty and one-label days,
and more than one task.

The predictions are hand-made (an FM on every event, a VM on the feed half, each a noisy copy of
the true logit), so the events behind every number are known here. The plots are caught as
matplotlib figures on their way to PNG, so the tests read what is drawn.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from matplotlib import dates as mdates

from fxrec.data.eventlog import EventLog, write_events
from fxrec.data.schema import DatasetSpec
from fxrec.metrics import ne
from fxrec.report import render
from fxrec.report.evaluate import ModelEntry, evaluate_run
from fxrec.report.periods import MIN_EVENTS, choose_period

SPEC = DatasetSpec(name="synthetic", features=[], tasks=["click", "conversion"], surfaces=["feed", "video"])
START = dt.date(2022, 1, 3)  # a Monday: week w holds days 7w .. 7w + 6
N_DAYS = 500
EVENTS_PER_DAY = 300
ONE_EVENT_DAYS = {10, 100, 250}  # inside otherwise full weeks
CONSTANT_DAYS = {20, 200}  # full days without a click
SPARSE_WEEK = 30  # 5 events a day: 35 in the week
CONSTANT_WEEK = 40  # full days, no click all week


def _day(index: int) -> str:
    return (START + dt.timedelta(days=index)).isoformat()


def _events(n_days: int) -> pl.DataFrame:
    """Every evaluation event with its labels and the FM's and VM's predictions, seeded."""
    rng = np.random.default_rng(0)
    frames = []
    for index in range(n_days):
        week = index // 7
        n = 1 if index in ONE_EVENT_DAYS else 5 if week == SPARSE_WEEK else EVENTS_PER_DAY
        true_logit = rng.normal(-1.5, 1.0, n)
        click = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.float32)
        if index in CONSTANT_DAYS or week == CONSTANT_WEEK:
            click[:] = 0
        if index in ONE_EVENT_DAYS:
            click[:] = 1  # a click the model gave 0.2: one event, and NE explodes
            true_logit[:] = np.log(0.2 / 0.8)
        conversion = click * (rng.random(n) < 0.2)
        frames.append(pl.DataFrame({
            "event_id": np.arange(n) + index * 10_000,
            "user_id": rng.integers(0, 200, n),
            "surface": np.where(np.arange(n) % 2 == 0, "feed", "video"),
            "day": [_day(index)] * n,
            "label_click": click,
            "fm_click": 1 / (1 + np.exp(-(true_logit + 0.3 * rng.standard_normal(n)))),
            "vm_click": 1 / (1 + np.exp(-(true_logit + 0.8 * rng.standard_normal(n)))),
            "label_conversion": conversion.astype(np.float32),
            "fm_conversion": np.full(n, 0.05),
            "vm_conversion": np.full(n, 0.06),
        }))
    return pl.concat(frames)


def _run(tmp_path: Path, events: pl.DataFrame) -> tuple[EventLog, list[ModelEntry]]:
    """A one-day event log (the report reads only its spec and schema) and the two models' predictions."""
    table = pa.table({
        "event_id": [1, 2], "ts": [0, 1], "user_id": [1, 2], "item_id": [1, 2], "surface": ["feed", "video"],
        "click": [0.0, 1.0], "conversion": [0.0, 0.0],
    })
    log = EventLog(write_events(table, SPEC, tmp_path / "events"))
    entries = []
    for name, role, surfaces in (("fm", "fm", None), ("vm_feed", "vm", ["feed"])):
        directory = tmp_path / "models" / name / "predictions"
        directory.mkdir(parents=True)
        prefix = name.split("_")[0]
        mine = events if surfaces is None else events.filter(pl.col("surface").is_in(surfaces))
        for (day,), group in mine.group_by("day"):
            group.select(
                "event_id", "user_id", "label_click", "label_conversion",
                pred_click=pl.col(f"{prefix}_click").cast(pl.Float32), pred_conversion=pl.col(f"{prefix}_conversion").cast(pl.Float32),
            ).write_parquet(directory / f"day={day}.parquet")
        entries.append(ModelEntry(name, role, surfaces, [], directory))
    return log, entries


def _report(tmp_path: Path, events: pl.DataFrame, monkeypatch, transfer: dict | None = None) -> tuple[dict, str, list]:
    """(report.json, report.html, the matplotlib figures drawn) for the synthetic run."""
    figures = []
    monkeypatch.setattr(render, "_png", lambda figure: figures.append(figure) or "")
    log, entries = _run(tmp_path, events)
    content = evaluate_run(log, entries, None)
    if transfer is not None:
        content["transfer"] = transfer
    json_path, html_path = render.write_report(content, tmp_path / "report.json", tmp_path / "report.html", title="synthetic")
    return json.loads(json_path.read_text()), html_path.read_text(), figures


@pytest.fixture(scope="module")
def long_log() -> pl.DataFrame:
    return _events(N_DAYS)


def _ne_series_figure(figures: list):
    (figure,) = [f for f in figures if f.axes[0].get_title().startswith("Progressive evaluation")]
    return figure


def test_long_log_is_weekly_and_marks_days_and_weeks_whose_ne_means_nothing(tmp_path, long_log, monkeypatch):
    """Problem 1: a one-event day read NE ~59; such days and constant-label periods are marked, not scored."""
    report, _, _ = _report(tmp_path, long_log, monkeypatch)
    over_time = report["ne_over_time"]
    assert over_time["period"] == "week"
    fm_days = {r["start"]: r for r in over_time["daily"]["fm"]}
    assert len(fm_days) == N_DAYS
    for index in ONE_EVENT_DAYS:
        assert fm_days[_day(index)]["excluded"] == f"fewer than {MIN_EVENTS} events" and fm_days[_day(index)]["ne"] is None
    for index in CONSTANT_DAYS:
        assert fm_days[_day(index)]["excluded"] == "constant label" and fm_days[_day(index)]["ne"] is None
    for model in ("fm", "vm_feed"):
        weeks = {r["start"]: r for r in over_time["periods"][model]}
        assert len(weeks) == -(-N_DAYS // 7)
        assert all(dt.date.fromisoformat(start).weekday() == 0 and r["n_days"] <= 7 for start, r in weeks.items())
        assert weeks[_day(7 * SPARSE_WEEK)]["excluded"] == f"fewer than {MIN_EVENTS} events"
        assert weeks[_day(7 * CONSTANT_WEEK)]["excluded"] == "constant label"
        assert {start for start, r in weeks.items() if r["excluded"]} == {_day(7 * SPARSE_WEEK), _day(7 * CONSTANT_WEEK)}
        assert max(r["ne"] for r in weeks.values() if r["ne"] is not None) < 5
    # A week holding a one-event day: NE of its pooled events against its own base rate.
    week = next(r for r in over_time["periods"]["fm"] if r["first_day"] <= _day(100) <= r["last_day"])
    pooled = long_log.filter(pl.col("day").is_between(pl.lit(week["first_day"]), pl.lit(week["last_day"])))
    assert week["n_eval"] == pooled.height
    assert week["ne"] == pytest.approx(ne(pooled["label_click"].to_numpy(), pooled["fm_click"].to_numpy()), rel=1e-6)


def test_plot_of_a_long_log_draws_no_excluded_period_and_reads_at_any_length(tmp_path, long_log, monkeypatch):
    """Problem 2: a 500-day plot had 500 overlapping labels and spikes to 1e6."""
    report, _, figures = _report(tmp_path, long_log, monkeypatch)
    axis = _ne_series_figure(figures).axes[0]
    lines = axis.get_lines()
    assert {line.get_label() for line in lines} == {"fm", "vm_feed"}
    for line in lines:
        drawn = np.asarray(line.get_ydata(), dtype=np.float64)
        assert np.nanmax(drawn) < 5  # no spike
        periods = report["ne_over_time"]["periods"][line.get_label()]
        assert len(drawn) == len(periods)  # one point per week, not per day
        assert np.isfinite(drawn).sum() == sum(r["excluded"] is None for r in periods)  # excluded weeks: gaps
    axis.figure.canvas.draw()
    labels = [t for t in axis.get_xticklabels() if t.get_text() and t.get_visible()]
    assert 3 <= len(labels) <= 12
    boxes = [t.get_window_extent() for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert all(t.get_rotation() > 0 for t in labels)


def test_period_is_a_day_only_for_few_full_days():
    assert choose_period(pl.Series([3000] * 7)) == "day"  # the demo: 7 days of thousands of events
    assert choose_period(pl.Series([470] * 213)) == "week"  # MovieLens-100K
    assert choose_period(pl.Series([5000] * 61)) == "week"  # too many points for one a day


def _transfer(channel_sets: dict[str, list[str]]) -> dict:
    """A transfer section with one VM and the given channel sets, at delay 0, without a test against KD."""
    rows = [
        {
            "vm": "vm_feed", "channel_set": name, "channels": channels, "delay": 0, "selected": name == "none",
            "ne_validation": 0.9, "ne": 0.9, "ne_std": 0.0, "auc": 0.7, "calibration": 1.0,
            "transfer_ratio": 0.0, "transfer_ratio_low": None, "transfer_ratio_high": None, "transfer_ratio_reason": None,
            "ne_change_pct_vs_none": 0.0, "baseline_ne": 0.9, "fm_ne": 0.8,
        }
        for name, channels in channel_sets.items()
    ]
    return {
        "validation_days": [_day(3)], "test_days": [_day(4)], "selection": "lowest validation NE", "seeds": [0],
        "rows": rows, "best": {"vm_feed": rows[0]},
        "drift": [{"fm_version": 2, "users": 10, "centroid_shift": 0.1, "mean_cosine": 0.9,
                   "stabilized_centroid_shift": 0.05, "stabilized_mean_cosine": 0.95}],
    }


def test_report_names_only_the_channel_sets_and_columns_it_has(tmp_path, monkeypatch):
    """Problem 3: the text pointed at `sum_stable3` rows that the run did not have."""
    events = _events(5)
    _, html, _ = _report(tmp_path / "one", events, monkeypatch, _transfer({"none": [], "sum": ["sum"]}))
    assert "user embeddings across FM versions" in html  # the drift section is there...
    assert "sum_stable3" not in html  # ...and names no set the run lacks
    assert "vs KD" not in html  # no column for a test that was not run
    assert "<code>sum</code>" in html
    _, html, _ = _report(tmp_path / "two", events, monkeypatch, _transfer({"none": [], "sum": ["sum"], "sum_stable3": ["sum"]}))
    assert "<code>sum</code>, <code>sum_stable3</code>" in html


def test_every_task_is_in_the_html(tmp_path, monkeypatch):
    """Problem 4: conversion metrics were only in report.json."""
    events = _events(5)
    report, html, _ = _report(tmp_path, events, monkeypatch)
    assert "<h3>conversion</h3>" in html
    for model in report["models"]:
        conversion = model["tasks"]["conversion"]
        assert conversion["excluded"] is None and conversion["positives"] > 0
        mine = events if model["name"] == "fm" else events.filter(pl.col("surface") == "feed")
        expected = ne(mine["label_conversion"].to_numpy(), mine[f"{model['name'].split('_')[0]}_conversion"].to_numpy())
        assert conversion["ne"] == pytest.approx(expected, rel=1e-5)
        assert f"<td>{conversion['ne']:.4f}</td><td>{conversion['auc']:.4f}</td>" in html


@pytest.mark.parametrize("n_points", [1, 3])
def test_a_short_series_is_ticked_by_day_not_by_hour_or_year(n_points):
    rows = [{"start": _day(i), "ne": 0.9, "excluded": None} for i in range(n_points)]
    figure = render.ne_over_time_figure({"period": "day", "task": "click", "periods": {"fm": rows}})
    figure.canvas.draw()
    ticks = [mdates.num2date(x) for x in figure.axes[0].get_xticks()]
    assert 1 <= len(ticks) <= 3
    assert all(t.hour == 0 and t.minute == 0 for t in ticks)  # whole days only
    assert max(ticks) - min(ticks) <= dt.timedelta(days=2)  # not a span of years around one point


def test_warmup_days_end_once_the_models_have_seen_enough_events(tmp_path):
    """A day is scored once the log holds `events` events before it; a one-event first day leaves the
    next day's predictions to a model that saw one event, so that day is not scored either."""
    import numpy as np
    import pyarrow as pa

    from fxrec.data.eventlog import EventLog, write_events
    from fxrec.data.schema import DatasetSpec, FeatureSpec
    from fxrec.report.evaluate import warmup_days

    spec = DatasetSpec(name="w", surfaces=["feed"], features=[FeatureSpec(name="item_id", kind="sparse", cardinality=8)])
    sizes = [1, 5, 2000, 10, 10]
    ts = np.concatenate([1_700_006_400 + d * 86_400 + np.arange(n) for d, n in enumerate(sizes)])
    n = len(ts)
    table = pa.table({"event_id": np.arange(n), "ts": ts, "user_id": np.arange(n) % 5, "item_id": np.arange(n) % 8,
                      "surface": ["feed"] * n, "click": (np.arange(n) % 3 == 0).astype(np.float32)})  # fmt: skip
    log = EventLog(write_events(table, spec, tmp_path / "events"))
    assert warmup_days(log, 1000) == log.days[:3]  # 0, 1, 6 events before them; 2006 before the fourth
    assert warmup_days(log, 6) == log.days[:2]
    assert warmup_days(log, 0) == []
