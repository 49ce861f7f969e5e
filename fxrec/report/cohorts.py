"""Cohort slices: every model's NE, AUC and calibration per cohort, against a named baseline model.

A report's cohort axes come from the run config (`report.cohorts`; `fxrec.metrics.cohorts` names them:
a categorical column such as `surface` or `age_bucket`, `<column>:<q>` quantile ranges,
`advertiser_size`, `user_activity`). Each axis is split on the baseline's evaluation events; every
model is scored on its events of each cohort, and compared with the baseline on the events both
predicted, with a paired bootstrap over users (`fxrec.metrics.bootstrap`): the relative NE change in
percent, the AUC difference and the calibration difference, each with its 95% interval.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from fxrec.data.eventlog import EventLog
from fxrec.metrics.bootstrap import auc_difference, ne_difference
from fxrec.metrics.cohorts import axis_columns, split_axis
from fxrec.metrics.ranking import auc, calibration, ne


def cohort_columns(log: EventLog, days: list[str], axes: list[str]) -> pl.DataFrame:
    """event_id and the raw columns the axes read, for the evaluation days (surface and user_id too)."""
    import pyarrow.parquet as pq

    available = set(pq.read_schema(log.day_files(log.days[0])[0]).names)
    wanted = list(dict.fromkeys(axis_columns(a) for a in axes))
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ValueError(
            f"report.cohorts: the axes {axes} read the columns {missing}, which the log does not have "
            f"(columns: {sorted(available)})"
        )
    names = list(dict.fromkeys(["event_id", *wanted]))
    frames = [pl.from_arrow(log.read_day(d, names)) for d in days if d in log.days]
    return pl.concat(frames)


def _metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    constant = len(labels) == 0 or labels.min() == labels.max()
    return {
        "n_eval": int(len(labels)),
        "positives": float(labels.sum()),
        "ne": None if constant else ne(labels, probs),
        "auc": None if constant else auc(labels, probs),
        "calibration": None if constant else calibration(labels, probs),
    }


def cohort_slices(
    frames: dict[str, pl.DataFrame],
    columns: pl.DataFrame,
    task: str,
    axes: list[str],
    baseline: str,
    resamples: int = 200,
    min_events: int = 20,
) -> dict:
    """The report's `cohorts` content: a row per (axis, cohort, model) with its metrics on `task` and,
    for every model but the baseline, its change against the baseline on the same events."""
    if baseline not in frames:
        raise ValueError(f"report.baseline {baseline!r} is not a model of this report ({sorted(frames)})")
    keep = [c for c in columns.columns if c not in ("user_id", "surface") or c == "event_id"]
    joined = {
        name: frame.join(columns.select(keep), on="event_id", how="inner") for name, frame in frames.items()
    }
    base = joined[baseline]
    label_column, pred_column = f"label_{task}", f"pred_{task}"

    def raw(frame: pl.DataFrame) -> dict[str, np.ndarray]:
        return {c: frame[c].to_numpy() for c in frame.columns if c not in (label_column, pred_column)}

    rows = []
    for axis in axes:
        cohorts = split_axis(axis, raw(base), min_events=min_events)
        for cohort in cohorts:
            for name, frame in joined.items():
                mask = cohort.mask(raw(frame))
                part = frame.filter(pl.Series(mask))
                labels = part[label_column].to_numpy().astype(np.float64)
                row = {
                    "axis": axis,
                    "cohort": cohort.name,
                    "model": name,
                    **_metrics(labels, part[pred_column].to_numpy()),
                }
                if name != baseline and row["ne"] is not None:
                    row.update(_against(part, joined[baseline], task, resamples))
                rows.append(row)
    return {"task": task, "baseline": baseline, "axes": axes, "resamples": resamples, "rows": rows}


def _against(part: pl.DataFrame, baseline: pl.DataFrame, task: str, resamples: int) -> dict:
    """The model's events of a cohort against the baseline's predictions of the same events."""
    label, pred = f"label_{task}", f"pred_{task}"
    same = part.select("event_id", "user_id", label, pred).join(
        baseline.select("event_id", pl.col(pred).alias("baseline")), on="event_id", how="inner"
    )
    labels = same[label].to_numpy().astype(np.float64)
    if same.height == 0 or labels.min() == labels.max():
        return {}
    users = same["user_id"].to_numpy()
    a, b = [same[pred].to_numpy()], [same["baseline"].to_numpy()]
    changes = ne_difference(labels, a, b, users, resamples=resamples)
    aucs = auc_difference(labels, a, b, users, resamples=resamples)
    return {
        "vs_baseline_events": int(same.height),
        "ne_change_pct": changes["ne_change_pct"],
        "ne_change_low": changes["ne_low"],
        "ne_change_high": changes["ne_high"],
        "auc_difference": aucs["difference"],
        "auc_difference_low": aucs["low"],
        "auc_difference_high": aucs["high"],
        "calibration_difference": changes["calibration_difference"],
        "calibration_difference_low": changes["calibration_low"],
        "calibration_difference_high": changes["calibration_high"],
    }
