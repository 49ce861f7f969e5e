"""Stream an event log as EventFrames, one day at a time, with leak-free histories attached."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fxrec.data.batches import EventFrame
from fxrec.data.eventlog import EventLog
from fxrec.data.history import HistoryTracker, _gather_ranges
from fxrec.data.labels import delay_columns
from fxrec.data.schema import FeatureKind, FeatureSpec


def _take_jagged(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.diff(offsets)[rows]
    index = _gather_ranges(offsets[:-1][rows], lengths)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), values[index]


def iter_frames(
    log: EventLog,
    features: list[FeatureSpec],
    days: list[str] | None = None,
    surfaces: list[str] | None = None,
    meta: tuple[str, ...] = (),
) -> Iterator[tuple[str, EventFrame]]:
    """Yield (day, EventFrame) in time order for `days` (default: all), optionally one surface's rows.

    Histories are built from every earlier day and every surface, so a VM on one surface still sees
    the user's clicks elsewhere if its features include the history. `meta`: more raw integer
    columns for `EventFrame.meta` (an objective's grouping column, e.g. advertiser_id).
    """
    for day, table, history in iter_tables(log, features, days, surfaces, meta):
        frame = EventFrame(table, log.spec, features, history, meta=meta)
        frame.day = day
        yield day, frame


def iter_tables(
    log: EventLog,
    features: list[FeatureSpec],
    days: list[str] | None = None,
    surfaces: list[str] | None = None,
    meta: tuple[str, ...] = (),
) -> Iterator[tuple[str, pa.Table, dict[str, tuple[np.ndarray, np.ndarray]] | None]]:
    """What `iter_frames` makes its frames of: (day, the model's columns, histories or None), the same
    days in the same order, for engines that ship a day's events elsewhere before they become tensors."""
    spec = log.spec
    wanted = set(days or log.days)
    last = max(wanted)
    sequence_sources = sorted({f.source for f in features if f.kind is FeatureKind.sequence and f.source})
    tracker = HistoryTracker(spec.history_length, sequence_sources, spec.history_label) if sequence_sources else None
    available = _columns_of(log)
    needed = [c for c in _model_columns(spec, features, meta) if c in available]
    for day in log.days:
        if day > last:
            break
        if tracker is None and day not in wanted:
            continue
        table = log.read_day(day, needed)
        history = tracker.attach(table)[1] if tracker else None
        if day not in wanted:
            continue
        if surfaces is not None:
            mask = pc.is_in(table.column("surface"), value_set=pa.array(surfaces)).to_numpy(zero_copy_only=False)
            rows = np.flatnonzero(mask)
            table = table.take(pa.array(rows))
            if history is not None:
                history = {k: _take_jagged(o, v, rows) for k, (o, v) in history.items()}
        if table.num_rows == 0:
            continue
        yield day, table, history


def _model_columns(spec, features: list[FeatureSpec], meta: tuple[str, ...] = ()) -> list[str]:
    """Only what this model reads: core columns, labels (with their delays), its features and its histories' sources."""
    columns = ["event_id", "ts", "user_id", "item_id", "surface", *spec.tasks, spec.history_label, *delay_columns(spec)]
    columns += [f.name for f in features if f.kind is not FeatureKind.sequence]
    columns += [f.source for f in features if f.kind is FeatureKind.sequence and f.source]
    columns += list(meta)
    return list(dict.fromkeys(columns))


def _columns_of(log: EventLog) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_schema(log.day_files(log.days[0])[0]).names)
