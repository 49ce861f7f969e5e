"""Import any CSV / Parquet files as an event log, given a DatasetSpec plus a column mapping.

`spec.yaml` is a DatasetSpec with a few import keys::

    name: shop
    surfaces: [web, app]
    features:
      - {name: country, kind: sparse, cardinality: 300}
      - {name: tags, kind: multi, cardinality: 1000}       # CSV: "3|17|40" (see list_separator)
      - {name: hist_item_id, kind: sequence, source: item_id, table: item_id}
      - {name: item_id, kind: sparse, cardinality: 100000}
    columns:               # event-log column: source column; unlisted columns keep their own name
      ts: time
      user_id: uid
      click: rating        # with click_threshold, click = 1.0 where rating >= threshold
    surface: web           # optional: one surface for every row when no source column gives it
    timestamp_format: "%Y-%m-%d %H:%M:%S"   # optional; default: ISO 8601 strings or unix numbers
    timestamp_unit: s      # unit of numeric timestamps: s, ms, us or ns
    click_threshold: 4     # optional
    list_separator: "|"    # multi features stored as strings
    delimiter: "::"        # optional; default "," for .csv, tab for .tsv, "::" for .dat (any length)
    column_names: [uid, item, rating, time]   # optional: the files have no header row
    encode:                # string or mixed categories -> int64 ids, per event-log column
      country: dict        # dict: distinct values numbered 1..k in sorted order, over all files
      user_id: hash        # hash: a stable 63-bit hash of the value's text
    negatives:             # optional: a clicks-only log becomes impressions (a simulation of exposures)
      per_positive: 4
      from: same_hour_pool # or catalogue; see fxrec/data/sources/negatives.py
      item_columns: [genre]

A worked example per kind of log is in `configs/examples/`.

Without an `event_id` column the importer numbers events 0, 1, ... in (ts, user_id, item_id) order.
Every file is checked before anything is written; bad input raises EventLogError naming the file,
the column and what was expected, and leaves `out` untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field

from fxrec.data.eventlog import EventLogError, check_labels, write_events
from fxrec.data.schema import CORE_COLUMNS, DatasetSpec, expected_type, label_columns
from fxrec.data.sources.ids import stable_hash
from fxrec.data.sources.negatives import NegativeSampling, add_negatives

_UNIT_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_POLARS_TYPES = {pa.int64(): pl.Int64, pa.float32(): pl.Float32, pa.string(): pl.String}


class TableImportOptions(BaseModel):
    """How to read the source tables: the import keys of spec.yaml, next to the DatasetSpec's keys."""

    model_config = ConfigDict(extra="forbid")

    columns: dict[str, str] = {}
    surface: str | None = None
    timestamp_format: str | None = None
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "s"
    click_threshold: float | None = None
    list_separator: str = "|"
    delimiter: str | None = Field(default=None, min_length=1)
    column_names: list[str] | None = None
    encode: dict[str, Literal["hash", "dict"]] = {}
    negatives: NegativeSampling | None = None


@dataclass(frozen=True)
class TableImportSpec:
    """A spec.yaml for `import_table`: the dataset it produces and how to read the sources."""

    dataset: DatasetSpec
    options: TableImportOptions

    def source_of(self, column: str) -> str:
        return self.options.columns.get(column, column)

    def log_columns(self) -> list[str]:
        """Event-log columns to fill: core, labels, features, sequence sources and any mapped extras."""
        return list(dict.fromkeys(self.dataset.columns() + list(self.options.columns)))

    @classmethod
    def load(cls, path: Path) -> TableImportSpec:
        try:
            raw = yaml.safe_load(Path(path).read_text())
            if not isinstance(raw, dict):
                raise ValueError("expected a mapping of DatasetSpec and import keys")
            unknown = sorted(set(raw) - set(DatasetSpec.model_fields) - set(TableImportOptions.model_fields))
            if unknown:
                raise ValueError(f"unknown keys {unknown}")
            options = {k: raw.pop(k) for k in list(raw) if k in TableImportOptions.model_fields}
            return cls(DatasetSpec.model_validate(raw), TableImportOptions.model_validate(options))
        except (OSError, yaml.YAMLError, ValueError) as error:
            raise EventLogError(f"{path}: not a valid table import spec ({error})") from None


_DEFAULT_DELIMITERS = {".csv": ",", ".txt": ",", ".tsv": "\t", ".dat": "::"}
_FIELD_SEPARATOR = "\x1f"  # stands in for a multi-character delimiter (ASCII unit separator)


def _read(path: Path, options: TableImportOptions) -> pa.Table:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            table = pq.read_table(path)
        elif suffix in _DEFAULT_DELIMITERS:
            table = _read_text(path, options.delimiter or _DEFAULT_DELIMITERS[suffix], options.column_names)
        else:
            raise EventLogError(
                f"{path}: unknown file type {suffix!r}; expected .csv, .tsv, .txt, .dat or .parquet"
            )
    except (OSError, pa.ArrowInvalid) as error:
        if "Empty CSV file" in str(error):
            raise EventLogError(f"{path}: empty file; expected a header and at least one row") from None
        raise EventLogError(f"{path}: cannot read as {suffix} ({error})") from None
    if table.num_rows == 0:
        raise EventLogError(f"{path}: no rows; expected at least one event")
    return table


def _read_text(path: Path, delimiter: str, column_names: list[str] | None) -> pa.Table:
    """A delimited text file; a delimiter longer than one character (MovieLens' `::`) is swapped for
    a one-byte separator first, since Arrow's CSV reader takes one byte."""
    read = pacsv.ReadOptions(column_names=column_names) if column_names else pacsv.ReadOptions()
    if len(delimiter) == 1:
        return pacsv.read_csv(path, read_options=read, parse_options=pacsv.ParseOptions(delimiter=delimiter))
    data = path.read_bytes().replace(delimiter.encode(), _FIELD_SEPARATOR.encode())
    parse = pacsv.ParseOptions(delimiter=_FIELD_SEPARATOR)
    return pacsv.read_csv(pa.BufferReader(data), read_options=read, parse_options=parse)


def _where(path: Path | str, source: str, column: str) -> str:
    named = f"column {source!r}" if source == column else f"column {source!r} (event-log column {column!r})"
    return f"{path}: {named}"


def _first_bad(original: pl.Series, converted: pl.Series) -> object:
    bad = converted.is_null() & original.is_not_null()
    return original.filter(bad).head(1).to_list()[0] if bad.any() else None


def _timestamps(series: pl.Series, spec: TableImportSpec, where: str) -> pl.Series:
    if series.dtype == pl.String:
        fmt = spec.options.timestamp_format
        expected = f"format {fmt!r}" if fmt else "ISO 8601 datetimes (or set timestamp_format)"
        try:
            parsed = series.str.to_datetime(fmt, strict=False, time_unit="us")
        except pl.exceptions.ComputeError:  # no format to infer from the first values
            bad = series.drop_nulls().head(1).to_list()
            raise EventLogError(f"{where} has a timestamp {bad[0] if bad else None!r} that does not parse; expected {expected}") from None
        bad = _first_bad(series, parsed)
        if bad is not None or parsed.null_count() == len(parsed):
            raise EventLogError(f"{where} has a timestamp {bad!r} that does not parse; expected {expected}")
        if parsed.dtype.time_zone is not None:  # type: ignore[union-attr]
            parsed = parsed.dt.convert_time_zone("UTC")
        return parsed.dt.epoch("s")
    if series.dtype.is_temporal():
        return (series.cast(pl.Datetime("us")) if series.dtype == pl.Date else series).dt.epoch("s")
    if series.dtype.is_numeric():
        seconds = series.cast(pl.Float64) // _UNIT_DIVISOR[spec.options.timestamp_unit]
        return seconds.cast(pl.Int64, strict=False)  # NaN becomes null, reported as an empty value
    raise EventLogError(
        f"{where} has type {series.dtype}; expected timestamps (strings, datetimes or unix numbers)"
    )


def _multi(series: pl.Series, spec: TableImportSpec, where: str) -> pl.Series:
    if series.dtype == pl.String:
        series = series.str.split(spec.options.list_separator).list.eval(
            pl.element().filter(pl.element() != "")
        )
    if not isinstance(series.dtype, pl.List):
        raise EventLogError(f"{where} has type {series.dtype}; expected lists of integer ids")
    flat = series.explode()
    ids = flat.cast(pl.Int64, strict=False)
    bad = _first_bad(flat, ids)
    if bad is not None:
        raise EventLogError(f"{where} has list value {bad!r}; expected integer ids")
    return series.cast(pl.List(pl.Int64))


def _cast(series: pl.Series, target: pa.DataType, where: str) -> pl.Series:
    dtype = _POLARS_TYPES[target]
    converted = series.cast(dtype, strict=False)
    bad = _first_bad(series, converted)
    if bad is None and dtype == pl.Int64 and series.dtype.is_float():
        lossy = (converted.cast(pl.Float64) != series).fill_null(False)
        bad = series.filter(lossy).head(1).to_list()[0] if lossy.any() else None
    if bad is not None:
        raise EventLogError(f"{where} has type {series.dtype} with value {bad!r}; expected {target}")
    return converted


def _encode(series: pl.Series, how: str, dictionary: dict[str, int] | None) -> pl.Series:
    """String or mixed categories as int64 ids (elements of list columns too); nulls stay null."""
    is_list = isinstance(series.dtype, pl.List)
    values = (series.explode() if is_list else series).cast(pl.String)
    if how == "hash":
        ids = pl.Series(stable_hash(values.to_arrow()), dtype=pl.Int64)
    else:
        assert dictionary is not None
        ids = values.replace_strict(dictionary, default=None, return_dtype=pl.Int64)
    ids = pl.select(pl.when(values.is_null()).then(None).otherwise(ids)).to_series()
    if not is_list:
        return ids.alias(series.name)
    lengths = series.list.len().fill_null(0).to_numpy()
    rebuilt = pl.Series(series.name, np.split(ids.to_numpy(), np.cumsum(lengths)[:-1]), dtype=pl.List(pl.Int64))
    return rebuilt


def _dictionaries(tables: list[pa.Table], spec: TableImportSpec) -> dict[str, dict[str, int]]:
    """For `encode: dict` columns: each distinct value over all files, numbered 1..k in sorted order."""
    dictionaries = {}
    for column, how in spec.options.encode.items():
        if how != "dict":
            continue
        source = spec.source_of(column)
        values: set[str] = set()
        for table in tables:
            if source in table.column_names:
                series = pl.from_arrow(table.column(source))
                assert isinstance(series, pl.Series)
                if isinstance(series.dtype, pl.List):
                    series = series.explode()
                values |= set(series.drop_nulls().cast(pl.String).to_list())
        dictionaries[column] = {v: i + 1 for i, v in enumerate(sorted(values))}
    return dictionaries


def _convert(
    path: Path, table: pa.Table, spec: TableImportSpec, dictionaries: dict[str, dict[str, int]]
) -> pl.DataFrame:
    """One file's rows as event-log columns, checked and typed; errors name the file and column."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    dataset = spec.dataset
    columns: dict[str, pl.Series] = {}
    for column in spec.log_columns():
        source = spec.source_of(column)
        where = _where(path, source, column)
        if source not in frame.columns:
            if column == "event_id":
                continue  # numbered after all files are read
            if column == "click" and spec.options.negatives is not None:
                columns[column] = pl.Series(column, np.ones(frame.height, dtype=np.float32))
                continue  # a clicks-only log: every logged row is a positive
            if column == "surface" and spec.options.surface is not None:
                columns[column] = pl.select(
                    pl.repeat(spec.options.surface, frame.height, dtype=pl.String).alias(column)
                ).to_series()
                continue
            raise EventLogError(
                f"{path}: missing column {source!r} (event-log column {column!r}, expected "
                f"{expected_type(dataset, column) or 'any type'}); found columns {frame.columns}"
            )
        series = frame.get_column(source)
        target = expected_type(dataset, column)
        if column in spec.options.encode:
            if series.dtype == pl.String and target == pa.list_(pa.int64()):
                series = series.str.split(spec.options.list_separator)
            series = _encode(series, spec.options.encode[column], dictionaries.get(column))
        if column == "ts":
            series = _timestamps(series, spec, where)
        elif column == "click" and spec.options.click_threshold is not None:
            series = (_cast(series, pa.float32(), where) >= spec.options.click_threshold).cast(pl.Float32)
        elif target == pa.list_(pa.int64()):
            series = _multi(series, spec, where)
        elif target in _POLARS_TYPES:
            series = _cast(series, target, where)
        if column in CORE_COLUMNS and series.null_count():
            raise EventLogError(f"{where} has {series.null_count()} empty values; expected none")
        columns[column] = series.alias(column)
    _check_values(path, spec, columns)
    return pl.DataFrame(list(columns.values()))


def _check_values(path: Path, spec: TableImportSpec, columns: dict[str, pl.Series]) -> None:
    click = columns["click"]
    outside = click.filter((click < 0) | (click > 1))
    if len(outside):
        where = _where(path, spec.source_of("click"), "click")
        raise EventLogError(f"{where} has value {outside[0]!r}; expected 0/1 labels (or set click_threshold)")
    labels = pa.table({c: columns[c].to_arrow() for c in label_columns(spec.dataset, list(columns))})
    check_labels(labels, spec.dataset, lambda column: _where(path, spec.source_of(column), column))
    unknown = sorted(set(columns["surface"].unique().to_list()) - set(spec.dataset.surfaces))
    if unknown:
        where = _where(path, spec.source_of("surface"), "surface")
        raise EventLogError(
            f"{where} has values {unknown}; expected one of the spec's surfaces {spec.dataset.surfaces}"
        )


def _check_event_ids(files: list[Path], frames: list[pl.DataFrame], spec: TableImportSpec) -> None:
    has_ids = ["event_id" in f.columns for f in frames]
    source = spec.source_of("event_id")
    if any(has_ids) and not all(has_ids):
        missing = files[has_ids.index(False)]
        raise EventLogError(
            f"{missing}: missing column {source!r} (event-log column 'event_id'), which other files have"
        )
    if not all(has_ids):
        return
    ids = pl.concat([f.select("event_id", pl.lit(i).alias("_file")) for i, f in enumerate(frames)])
    repeated = ids.filter(pl.col("event_id").is_duplicated())
    if repeated.height:
        example = repeated.get_column("event_id")[0]
        where = sorted(
            {str(files[i]) for i in repeated.filter(pl.col("event_id") == example).get_column("_file")}
        )
        raise EventLogError(
            f"{_where(', '.join(where), source, 'event_id')} repeats the value {example}; "
            "expected unique event ids"
        )


def import_table(spec_path: Path, files: list[Path], out: Path) -> Path:
    """Import CSV / Parquet `files` described by `spec_path` as an event log at `out`."""
    spec = TableImportSpec.load(Path(spec_path))
    files = [Path(f) for f in files]
    if not files:
        raise EventLogError(f"{spec_path}: no input files given")
    unknown = sorted(set(spec.options.encode) - set(spec.log_columns()))
    if unknown:
        raise EventLogError(f"{spec_path}: encode names {unknown}, which are not event-log columns {spec.log_columns()}")
    tables = [_read(path, spec.options) for path in files]
    dictionaries = _dictionaries(tables, spec)
    frames = [_convert(path, table, spec, dictionaries) for path, table in zip(files, tables, strict=True)]
    _check_event_ids(files, frames, spec)
    events = pl.concat(frames, how="vertical_relaxed")
    if spec.options.negatives is not None:
        events = add_negatives(events, spec.options.negatives, spec.dataset.tasks, where=str(spec_path))
    if "event_id" not in events.columns:
        order = np.lexsort([events.get_column(c).to_numpy() for c in ("item_id", "user_id", "ts")])
        event_id = np.empty(events.height, dtype=np.int64)
        event_id[order] = np.arange(events.height, dtype=np.int64)
        events = events.with_columns(pl.Series("event_id", event_id))
    source = ", ".join(str(f) for f in files)
    return write_events(events.to_arrow(), spec.dataset, Path(out), source=source)
