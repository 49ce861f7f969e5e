"""The event log on disk: Parquet partitioned by UTC day, written atomically, read one day at a time.

Layout::

    events/
      spec.yaml                       DatasetSpec
      day=2026-01-01/part-0.parquet   rows sorted by (ts, event_id)
      day=2026-01-02/part-0.parquet

Reading a day at a time keeps memory bounded by the largest day, whatever the log's length.
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from pydantic import ValidationError

from fxrec.data.schema import (
    CORE_COLUMNS,
    DatasetSpec,
    FeatureKind,
    binary_label,
    expected_type,
    label_columns,
)
from fxrec.errors import InputError, describe_validation

SPEC_FILE = "spec.yaml"


class EventLogError(InputError):
    """Bad input for an event log: says which source, which column and what was expected."""


def day_of(ts_seconds: np.ndarray) -> np.ndarray:
    """UTC calendar day (as 'YYYY-MM-DD' strings) of unix timestamps."""
    return np.datetime_as_string(ts_seconds.astype("datetime64[s]"), unit="D")


def check_labels(table: pa.Table, spec: DatasetSpec, where: Callable[[str], str]) -> None:
    """Every label column is complete, and click, conversion and the tasks hold only 0/1.

    A missing label is an error, never a silent 0: it would train the model on a negative nobody
    observed. `where(column)` names the column in the message (file, source column).
    """
    for name in label_columns(spec, table.column_names):
        column = table.column(name)
        if column.null_count:
            raise EventLogError(f"{where(name)} has {column.null_count} empty values; expected a label on every event")
        if binary_label(spec, name):
            outside = pc.and_(pc.not_equal(column, 0), pc.not_equal(column, 1))  # cheaper than is_in: ~3 ms / 1M rows
            if pc.any(outside).as_py():
                raise EventLogError(f"{where(name)} has value {column.filter(outside)[0].as_py()!r}; expected 0/1 labels")


def validate_events(table: pa.Table, spec: DatasetSpec, source: str) -> pa.Table:
    """Check and cast a table to the event-log schema; raise EventLogError naming source and column."""
    if table.num_rows == 0:
        raise EventLogError(f"{source}: no rows; an event log needs at least one event")
    required = list(CORE_COLUMNS) + [t for t in spec.tasks if t != "click"]
    required += [f.name for f in spec.features if f.kind is not FeatureKind.sequence]
    required += spec.sequence_sources()
    if spec.sequence_sources():
        required.append(spec.history_label)  # histories are built from it
    for column in dict.fromkeys(required):
        if column not in table.column_names:
            raise EventLogError(
                f"{source}: missing column {column!r} (expected {expected_type(spec, column)}); "
                f"found columns {table.column_names}"
            )
    columns = {}
    for name in table.column_names:
        target = expected_type(spec, name)
        column = table.column(name)
        if target is not None and column.type != target:
            try:
                column = column.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise EventLogError(
                    f"{source}: column {name!r} has type {column.type}, expected {target} ({error})"
                ) from None
        columns[name] = column
    table = pa.table(columns)
    for name in ("event_id", "ts", "user_id", "item_id", "surface", "click"):
        nulls = table.column(name).null_count
        if nulls:
            raise EventLogError(f"{source}: column {name!r} has {nulls} null values; expected none")
    event_ids = table.column("event_id")
    if pc.count_distinct(event_ids).as_py() != table.num_rows:
        counts = pc.value_counts(event_ids)
        duplicated = [c["values"].as_py() for c in counts if c["counts"].as_py() > 1][:5]
        raise EventLogError(f"{source}: column 'event_id' has duplicate values, e.g. {duplicated}; expected unique ids")
    unknown = set(pc.unique(table.column("surface")).to_pylist()) - set(spec.surfaces)
    if unknown:
        raise EventLogError(f"{source}: column 'surface' has values {sorted(unknown)} not in the spec's surfaces {spec.surfaces}")
    check_labels(table, spec, lambda column: f"{source}: column {column!r}")
    return table


def write_events(table: pa.Table, spec: DatasetSpec, out: Path, source: str = "events") -> Path:
    """Validate, sort by (ts, event_id), partition by day and write atomically; return `out`.

    Nothing under `out` changes unless the whole log is valid and written: the new log is built in a
    sibling temp folder and swapped in with renames.
    """
    out = Path(out)
    table = validate_events(table, spec, source)
    table = table.sort_by([("ts", "ascending"), ("event_id", "ascending")])
    days = day_of(table.column("ts").to_numpy())
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        boundaries = np.flatnonzero(days[1:] != days[:-1]) + 1
        starts = np.concatenate([[0], boundaries])
        ends = np.concatenate([boundaries, [len(days)]])
        for start, end in zip(starts, ends, strict=True):
            folder = tmp / f"day={days[start]}"
            folder.mkdir()
            pq.write_table(table.slice(start, end - start), folder / "part-0.parquet", row_group_size=65536)
        spec.save(tmp / SPEC_FILE)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_in(new: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


class EventLog:
    """A day-partitioned event log on disk."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        spec_path = self.path / SPEC_FILE
        if not spec_path.exists():
            raise EventLogError(f"{self.path}: not an event log (no {SPEC_FILE}); create one with `fxrec data simulate` or `fxrec data import`")
        try:
            self.spec = DatasetSpec.load(spec_path)
        except ValidationError as error:
            raise EventLogError(f"{spec_path}: not a dataset spec ({describe_validation(error, DatasetSpec)})") from None
        except (OSError, yaml.YAMLError) as error:
            raise EventLogError(f"{spec_path}: not a dataset spec ({' '.join(str(error).split())})") from None
        self.days: list[str] = sorted(p.name.removeprefix("day=") for p in self.path.glob("day=*") if p.is_dir())
        if not self.days:
            raise EventLogError(f"{self.path}: event log has no day=... partitions")

    def day_files(self, day: str) -> list[Path]:
        return sorted((self.path / f"day={day}").glob("*.parquet"))

    def read_day(self, day: str, columns: list[str] | None = None) -> pa.Table:
        """One day's events in (ts, event_id) order; labels checked as when the log was written."""
        tables = [pq.read_table(f, columns=columns) for f in self.day_files(day)]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        check_labels(table, self.spec, lambda column: f"{self.path / f'day={day}'}: column {column!r}")
        return table

    def iter_days(self, columns: list[str] | None = None, days: list[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
        for day in days or self.days:
            yield day, self.read_day(day, columns)

    def num_rows(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for d in self.days for f in self.day_files(d))

    def read_all(self, columns: list[str] | None = None) -> pa.Table:
        return pa.concat_tables([t for _, t in self.iter_days(columns)])


def day_start_ts(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp())
