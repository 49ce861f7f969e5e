"""Metrics for every model of a run, computed from the progressive predictions on disk.

Each VM is compared with the FM on exactly the VM's evaluation events (joined by event_id), which
is the comparison the transfer ratio is defined on. Every task of the log is scored for every model
(`tasks`); NE over time follows `fxrec.report.periods`. Labels are the matured ones the trainer wrote
with its predictions (every conversion, however late it came): a model trained on labels as observed
at its cutoff is judged by the final outcome, as an ads system judges it once conversions are in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from fxrec.data.eventlog import EventLog
from fxrec.metrics import evaluate, relative_ne_change
from fxrec.report.cohorts import cohort_columns, cohort_slices
from fxrec.report.periods import excluded_reason, ne_over_time


@dataclass
class ModelEntry:
    name: str
    role: str  # "fm" | "vm"
    surfaces: list[str] | None
    channels: list[str]
    predictions: Path  # folder of day=*.parquet


def load_predictions(entry: ModelEntry) -> pl.DataFrame:
    files = sorted(entry.predictions.glob("day=*.parquet"))
    if not files:
        raise FileNotFoundError(f"model {entry.name!r} has no predictions under {entry.predictions}; train it first")
    frames = [pl.read_parquet(f).with_columns(day=pl.lit(f.stem.removeprefix("day="))) for f in files]
    return pl.concat(frames)


def _metrics(frame: pl.DataFrame, task: str) -> dict[str, float]:
    return evaluate(frame[f"label_{task}"].to_numpy(), frame[f"pred_{task}"].to_numpy(), frame["user_id"].to_numpy())


def task_metrics(frame: pl.DataFrame, task: str) -> dict:
    """One model's metrics on one task over all its evaluation events, plus `positives` and
    `excluded` ("constant label" when the task has no positive or no negative there: NE, AUC, GAUC and
    calibration are then NaN instead of a division by a zero entropy)."""
    labels = frame[f"label_{task}"].to_numpy()
    metrics = {**_metrics(frame, task), "positives": float(labels.sum()), "excluded": excluded_reason(labels, min_events=1)}
    if metrics["excluded"] is not None:
        metrics.update(ne=float("nan"), auc=float("nan"), gauc=float("nan"), calibration=float("nan"))
    return metrics


def warmup_days(log: EventLog, events: int) -> list[str]:
    """The log's first days, up to the first day with at least `events` events before it: their
    predictions come from models that had trained on fewer events than that (after a one-event first
    day, the next day is scored by a model that saw one event -- a prior, not a model)."""
    import pyarrow.parquet as pq

    days, seen = [], 0
    for day in log.days:
        if seen >= events:
            break
        days.append(day)
        seen += sum(pq.ParquetFile(f).metadata.num_rows for f in log.day_files(day))
    return days


def report_days(frame: pl.DataFrame, last: int | None, skip: list[str] | None = None) -> list[str]:
    """The days a report scores: the frame's prediction days less `skip` (warm-up days), the last `last`.
    A log shorter than its warm-up keeps every day (scored as they are, rather than nothing)."""
    all_days = sorted(frame["day"].unique().to_list())
    skipped = set(skip or [])
    days = [d for d in all_days if d not in skipped] or all_days
    return days[-last:] if last else days


def evaluate_run(
    log: EventLog,
    entries: list[ModelEntry],
    last_days: int | None,
    warmup_events: int = 0,
    cohorts: list[str] | None = None,
    baseline: str | None = None,
    resamples: int = 200,
) -> dict:
    """The report's content: per-model metrics on every task, VM-vs-FM comparisons (first task), NE
    over time (first task, see `fxrec.report.periods`), oracle, and cohort slices along the `cohorts`
    axes against the `baseline` model (default: the FM; first task, `fxrec.report.cohorts`). Days
    before the models had trained on `warmup_events` events are left out (`warmup_days` in the content)."""
    spec = log.spec
    tasks = spec.tasks
    predictions = {e.name: load_predictions(e) for e in entries}
    fm = next((e for e in entries if e.role == "fm"), None)
    first = predictions[fm.name] if fm else next(iter(predictions.values()))
    early = warmup_days(log, warmup_events)
    days = report_days(first, last_days, early)
    predicted = set(first["day"].unique().to_list())
    warmup = [d for d in early if d in predicted and d not in days]
    oracle = _oracle(log, days)
    models, comparisons, frames = [], [], {}
    for entry in entries:
        frame = frames[entry.name] = predictions[entry.name].filter(pl.col("day").is_in(days))
        row = {
            "name": entry.name,
            "role": entry.role,
            "surface": ",".join(entry.surfaces) if entry.surfaces else "all",
            "channels": entry.channels,
        }
        row["tasks"] = {t: task_metrics(frame, t) for t in tasks}
        row.update({k: row["tasks"][tasks[0]][k] for k in ("ne", "auc", "gauc", "calibration", "log_loss", "n_eval")})
        models.append(row)
        if fm is not None and entry.role == "vm":
            same = predictions[fm.name].join(frame.select("event_id"), on="event_id", how="inner")
            if same.height != frame.height:
                raise ValueError(f"FM predictions cover {same.height} of VM {entry.name!r}'s {frame.height} evaluation events")
            fm_metrics = _metrics(same, tasks[0])
            comparison = {
                "vm": entry.name,
                "surface": row["surface"],
                "n_eval": row["n_eval"],
                "vm_ne": row["ne"],
                "fm_ne": fm_metrics["ne"],
                "vm_auc": row["auc"],
                "fm_auc": fm_metrics["auc"],
                "fm_ne_gain_pct": relative_ne_change(fm_metrics["ne"], row["ne"]),
            }
            if oracle is not None:
                joined = oracle.join(frame.select("event_id"), on="event_id", how="inner")
                comparison["oracle_ne"] = _metrics(joined, "click")["ne"] if "label_click" in joined.columns else None
            comparisons.append(comparison)
    result = {
        "dataset": spec.name,
        "tasks": tasks,
        "eval_days": days,
        "warmup_days": warmup,
        "warmup_events": warmup_events,
        "models": models,
        "comparisons": comparisons,
        "ne_over_time": ne_over_time(frames, tasks[0]),
    }
    if cohorts:
        named = baseline or (fm.name if fm is not None else entries[0].name)
        columns = cohort_columns(log, days, cohorts)
        result["cohorts"] = cohort_slices(frames, columns, tasks[0], list(cohorts), named, resamples)
    if oracle is not None:
        result["oracle"] = {k: v for k, v in _metrics(oracle, "click").items() if k != "gauc"}
    return result


def _oracle(log: EventLog, days: list[str]) -> pl.DataFrame | None:
    """The simulator's ground-truth click probability on the evaluation days, when the log has it."""
    import pyarrow.parquet as pq

    if "oracle_logit" not in pq.read_schema(log.day_files(log.days[0])[0]).names:
        return None
    frames = [pl.from_arrow(log.read_day(d, ["event_id", "user_id", "click", "oracle_logit"])) for d in days if d in log.days]
    frame = pl.concat(frames)
    logits = frame["oracle_logit"].to_numpy().astype(np.float64)
    return frame.select(
        "event_id",
        "user_id",
        label_click=pl.col("click"),
        pred_click=pl.Series(1.0 / (1.0 + np.exp(-logits))),
    )
