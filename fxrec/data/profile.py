"""What an event log holds, and what in it will hurt training, before any model sees it.

`profile_log(log)` summarises a log the way a user checks a new dataset: events, users, items and
days; events and the rate of every label per day; each column's cardinality and null share. Its
`warnings` name what will mislead a model or a metric, each with what to do about it:

- days with very few events (per-day NE and AUC are noise there; a progressive run's first
  training day sets the heads' starting bias);
- a label that is all 0 or all 1 over a day (NE and AUC are undefined on that day);
- a long tail of one-off ids (each trains its own embedding row from a single example: set
  `min_count` so rare ids share the "new id" row);
- nulls in a label column.

`fxrec data profile DIR` prints it; every import prints it at the end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from fxrec.data.eventlog import EventLog
from fxrec.data.schema import FeatureKind

FEW_EVENTS = 100  # a day with fewer events than this gives per-day metrics no one should read
ONE_OFF_SHARE = 0.5  # more than half of a column's ids seen once: a long tail worth admission


@dataclass
class ColumnProfile:
    name: str
    cardinality: int  # distinct non-null values (list columns: distinct elements)
    null_share: float
    one_off_share: float | None = None  # id columns: share of distinct ids seen in one event only


@dataclass
class DayProfile:
    day: str
    events: int
    label_rates: dict[str, float]


@dataclass
class LogProfile:
    path: str
    events: int
    users: int
    items: int
    days: list[DayProfile]
    columns: list[ColumnProfile]
    labels: list[str]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def profile_log(log: EventLog) -> LogProfile:
    """Summarise `log` and list what will hurt training; reads only the spec's columns."""
    spec, present = log.spec, _present(log)
    labels = [t for t in spec.tasks if t in present]
    frame = pl.from_arrow(log.read_all(columns=[c for c in spec.columns() if c in present]))
    frame = frame.with_columns(day=pl.from_epoch("ts", time_unit="s").dt.date().cast(pl.String))
    per_day = frame.group_by("day").agg(pl.len().alias("events"), *[pl.col(t).mean().alias(t) for t in labels])
    days = [
        DayProfile(day=row["day"], events=row["events"], label_rates={t: float(row[t] or 0.0) for t in labels})
        for row in per_day.sort("day").iter_rows(named=True)
    ]
    id_columns = {"user_id", "item_id", "advertiser_id"} | {
        f.name for f in spec.features if f.kind is FeatureKind.sparse and f.name in frame.columns
    }
    columns = [_column(frame, name, name in id_columns) for name in frame.columns if name not in ("day", "event_id", "ts")]
    profile = LogProfile(
        path=str(log.path),
        events=frame.height,
        users=frame["user_id"].n_unique(),
        items=frame["item_id"].n_unique(),
        days=days,
        columns=columns,
        labels=labels,
    )
    profile.warnings = _warnings(profile)
    return profile


def _present(log: EventLog) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_schema(log.day_files(log.days[0])[0]).names)


def _column(frame: pl.DataFrame, name: str, is_id: bool) -> ColumnProfile:
    values = frame[name]
    null_share = values.null_count() / max(frame.height, 1)
    if values.dtype == pl.List:
        values = values.explode()
    values = values.drop_nulls()
    one_off = None
    if is_id and len(values):
        counts = values.value_counts()["count"]
        one_off = float((counts == 1).sum() / len(counts))
    return ColumnProfile(name=name, cardinality=values.n_unique(), null_share=float(null_share), one_off_share=one_off)


def _warnings(profile: LogProfile) -> list[str]:
    warnings = []
    thin = [d.day for d in profile.days if d.events < FEW_EVENTS]
    if thin:
        warnings.append(
            f"{len(thin)} of {len(profile.days)} days have fewer than {FEW_EVENTS} events ({_few(thin)}): "
            "per-day NE/AUC there is noise, and a tiny first training day sets the heads' starting bias; "
            "merge such days or start the run after them"
        )
    for label in profile.labels:
        constant = [d.day for d in profile.days if d.label_rates[label] in (0.0, 1.0)]
        if constant:
            warnings.append(
                f"label {label!r} is constant on {len(constant)} day(s) ({_few(constant)}): NE and AUC are "
                "undefined there; those days only move the base rate"
            )
    for column in profile.columns:
        if column.name in profile.labels and column.null_share > 0:
            warnings.append(f"label {column.name!r} is null in {column.null_share:.1%} of events: fill or drop them")
        if column.one_off_share is not None and column.one_off_share > ONE_OFF_SHARE and column.cardinality >= 20:
            warnings.append(
                f"{column.one_off_share:.0%} of {column.name!r}'s {column.cardinality:,} ids occur once: each would "
                "train its own embedding row from one example; set the model's min_count (e.g. 2-10) so rare ids "
                "share one row"
            )
    return warnings


def _few(days: list[str], shown: int = 3) -> str:
    return ", ".join(days[:shown]) + (f", ... {len(days) - shown} more" if len(days) > shown else "")
