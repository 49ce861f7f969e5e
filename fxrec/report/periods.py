"""NE over time: one row per evaluation day, and the series the report plots, pooled into periods.

The period, one rule for every log:

- **day** when the report covers at most `MAX_DAILY_PERIODS` (60) days and the median day holds at
  least `FULL_DAY_EVENTS` (1,000) events of the model that saw the most events (the FM): few, full days;
- **week** otherwise (ISO weeks, Monday to Sunday, each named by its Monday): a 213-day MovieLens log at
  ~470 events a day, or a 400-800-day log, gives 31-115 points of several thousand events each.

A period's NE is the NE of its pooled events (`fxrec.metrics.ne`): the mean log loss over all of them
divided by the entropy of their own base rate, never a mean of daily NEs.

A day or period is *excluded* when it holds fewer than `MIN_EVENTS` (100) events or its label is
constant (no positive or no negative): the entropy it divides by is zero or nearly so, which is how a
one-event day reads NE 59 and a day without clicks 1e6. Excluded rows stay in report.json with
`excluded` naming the reason and `ne`/`auc` left empty; the plot leaves a gap there, never a spike.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from fxrec.metrics import auc, log_loss, ne

MAX_DAILY_PERIODS = 60
FULL_DAY_EVENTS = 1_000
MIN_EVENTS = 100
RULE = (
    f"by day when at most {MAX_DAILY_PERIODS} days and the median day holds at least {FULL_DAY_EVENTS:,} events, "
    f"else by ISO week; a period with fewer than {MIN_EVENTS} events or a constant label is excluded"
)


def excluded_reason(labels: np.ndarray, min_events: int = MIN_EVENTS) -> str | None:
    """Why NE on these events means nothing (None when it means something). labels: (N,)."""
    if len(labels) < min_events:
        return f"fewer than {min_events} events"
    if labels.min() == labels.max():
        return "constant label"
    return None


def choose_period(events_per_day: pl.Series) -> str:
    """"day" or "week" for the report's days, from the per-day event counts of the widest model."""
    few = len(events_per_day) <= MAX_DAILY_PERIODS
    return "day" if few and events_per_day.median() >= FULL_DAY_EVENTS else "week"


def _row(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Pooled metrics of one day or period. labels, probs: (N,)."""
    reason = excluded_reason(labels)
    return {
        "n_eval": int(len(labels)),
        "positives": float(labels.sum()),
        "log_loss": log_loss(labels, probs),
        "ne": ne(labels, probs) if reason is None else float("nan"),
        "auc": auc(labels, probs) if reason is None else float("nan"),
        "excluded": reason,
    }


def series(frame: pl.DataFrame, task: str, period: str) -> list[dict]:
    """One row per period of `frame` (a model's predictions with a "day" column), oldest first.

    Each row: `start` (the day, or the week's Monday), `first_day`/`last_day` (evaluation days it
    covers), `n_days`, and the pooled `n_eval`, `positives`, `log_loss`, `ne`, `auc`, `excluded`.
    """
    date = pl.col("day").str.to_date()
    keyed = frame.with_columns(start=(date if period == "day" else date.dt.truncate("1w")).cast(pl.String))
    rows = []
    for (start,), group in sorted(keyed.group_by("start"), key=lambda item: item[0][0]):
        days = group["day"].unique().sort()
        rows.append({
            "start": start,
            "first_day": days[0],
            "last_day": days[-1],
            "n_days": len(days),
            **_row(group[f"label_{task}"].to_numpy(), group[f"pred_{task}"].to_numpy()),
        })
    return rows


def ne_over_time(frames: dict[str, pl.DataFrame], task: str) -> dict:
    """Per-day rows and the plotted period series of every model, on `task`.

    frames: model name -> its predictions on the report's days (a "day" column). Returns
    {"task", "period", "rule", "min_events", "daily": {model: rows}, "periods": {model: rows}}.
    """
    widest = max(frames.values(), key=lambda f: f.height)
    period = choose_period(widest.group_by("day").len()["len"])
    daily = {name: series(frame, task, "day") for name, frame in frames.items()}
    return {
        "task": task,
        "period": period,
        "rule": RULE,
        "min_events": MIN_EVENTS,
        "daily": daily,
        "periods": daily if period == "day" else {name: series(frame, task, period) for name, frame in frames.items()},
    }
