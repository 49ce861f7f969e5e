"""A population from an fxrec event log: how real tables reach the audience tools.

A real table (CSV / Parquet of impressions with user attributes) first becomes an event log through
the table importer and its spec (`fxrec data import table spec.yaml FILES`, see
fxrec/data/sources/table.py); `population_from_events` then folds the log into one row per user:

- each categorical or numeric field takes the value of the user's latest event (a sparse or dense
  event-log column of integer ids; categorical values are the ids written as text: `country:7`);
- each segment namespace is the union of a multi column's ids over the user's events (the schema's
  segment names are the ids as text, `interest:12`);
- impressions per surface count the user's events on it.

The fold reads the columns it needs for the whole log at once: fine for logs of a few million
events; a larger log is folded day by day in part 2 (same output, a running aggregate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from fxrec.audience.population import SCHEMA_FILE
from fxrec.audience.schema import AudienceSchema, Columns, pack_bits
from fxrec.data.eventlog import EventLog, EventLogError


class EventAudienceSpec(BaseModel):
    """Which event-log columns hold each targetable field (field or namespace: column)."""

    model_config = ConfigDict(extra="forbid")

    categorical: dict[str, str] = {"country": "country", "device": "device"}
    numeric: dict[str, str] = {}
    segments: dict[str, str] = {"interest": "user_segments"}


def population_from_events(
    events: Path, spec: EventAudienceSpec, out: Path | None = None
) -> tuple[AudienceSchema, Columns]:
    """One row per user of the event log at `events`; written as a population folder when `out` is given."""
    log = EventLog(events)
    wanted = [
        "user_id",
        "ts",
        "surface",
        *spec.categorical.values(),
        *spec.numeric.values(),
        *spec.segments.values(),
    ]
    missing = [c for c in dict.fromkeys(wanted) if c not in log.spec.columns()]
    if missing:
        raise EventLogError(f"{events}: the audience spec names columns {missing} that the event log lacks")
    frame = pl.from_arrow(log.read_all(list(dict.fromkeys(wanted))))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.sort("user_id", "ts")
    users = frame.group_by("user_id", maintain_order=True)
    latest = users.agg(
        [pl.col(c).last().alias(f"{field}") for field, c in {**spec.categorical, **spec.numeric}.items()]
    )
    user_id = latest.get_column("user_id").to_numpy().astype(np.int64)
    categorical, values = {}, {}
    for name in spec.categorical:
        ids = latest.get_column(name).fill_null(0).to_numpy()
        distinct = np.unique(ids)
        values[name] = tuple(str(v) for v in distinct)
        categorical[name] = np.searchsorted(distinct, ids).astype(np.int16)
    numeric = {
        name: latest.get_column(name).fill_null(0).to_numpy().astype(np.int16) for name in spec.numeric
    }
    position = {u: i for i, u in enumerate(user_id.tolist())}
    rows = np.array([position[u] for u in frame.get_column("user_id").to_list()])
    surfaces = tuple(log.spec.surfaces)
    surface_of = frame.get_column("surface").replace_strict({s: i for i, s in enumerate(surfaces)}).to_numpy()
    impressions = np.zeros((len(user_id), len(surfaces)), dtype=np.int32)
    np.add.at(impressions, (rows, surface_of), 1)
    segments, names = {}, {}
    for namespace, column in spec.segments.items():
        lists = frame.get_column(column)
        lengths = lists.list.len().fill_null(0).to_numpy()
        ids = lists.explode().drop_nulls().to_numpy().astype(np.int64)
        distinct = np.unique(ids)
        names[namespace] = tuple(str(v) for v in distinct)
        flags = np.zeros((len(user_id), max(1, len(distinct))), dtype=bool)
        flags[np.repeat(rows, lengths), np.searchsorted(distinct, ids)] = True
        segments[namespace] = pack_bits(flags, max(1, (len(distinct) + 63) // 64))
    bounds = {n: (int(a.min()), int(a.max())) for n, a in numeric.items()}
    schema = AudienceSchema(values, bounds, names, surfaces)
    columns = Columns(user_id, categorical, numeric, segments, impressions)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        schema.save(Path(out) / SCHEMA_FILE)
        pq.write_table(columns.to_arrow(schema), Path(out) / "part-00000.parquet")
    return schema, columns
