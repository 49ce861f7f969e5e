"""Compact, lossless Parquet for what fxrec writes per event and per day (predictions, published FM outputs).

The same schema and the same values as a plain `pq.write_table`, in about a third of the bytes for
predictions and three quarters for published FM outputs: every column compressed with zstd, and an
encoding chosen per column from its values --

- float columns (and fixed-size lists of floats: user embeddings, TAEs) with many distinct values:
  BYTE_STREAM_SPLIT, which puts the bytes of equal significance together so zstd finds the repeats
  in exponents and high mantissa bytes;
- integer columns that never decrease (event_id, ts, in log order): DELTA_BINARY_PACKED;
- everything else (labels, surfaces, versions, `trained_through`, LoopFM codes): dictionary encoding.

Readers need nothing new: pyarrow and polars decode all three encodings into the same columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# A float column with at most this many distinct values (0/1 labels) is smaller dictionary-encoded.
FEW_VALUES = 256


def column_encodings(table: pa.Table) -> dict[str, str]:
    """The columns to write without a dictionary, with their encoding (see the module docstring)."""
    encodings: dict[str, str] = {}
    for field, column in zip(table.schema, table.columns, strict=True):
        kind = field.type
        if pa.types.is_fixed_size_list(kind) and pa.types.is_floating(kind.value_type):
            encodings[_leaf(field)] = "BYTE_STREAM_SPLIT"
        elif pa.types.is_floating(kind) and pc.count_distinct(column).as_py() > FEW_VALUES:
            encodings[field.name] = "BYTE_STREAM_SPLIT"
        elif pa.types.is_integer(kind) and column.null_count == 0 and len(column) > 1:
            values = column.to_numpy()
            if np.all(values[1:] >= values[:-1]):
                encodings[field.name] = "DELTA_BINARY_PACKED"
    return encodings


def write_compact(table: pa.Table, path: Path | str) -> None:
    """Write `table` to `path` as Parquet: zstd, one encoding per column (lossless; same schema)."""
    encodings = column_encodings(table)
    dictionary = [leaf for leaf in map(_leaf, table.schema) if leaf not in encodings]
    pq.write_table(
        table, path, compression="zstd", use_dictionary=dictionary, column_encoding=encodings or None
    )


def _leaf(field: pa.Field) -> str:
    """The Parquet column path of a field's values: a list's values sit at `<name>.list.element`."""
    is_list = pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type)
    return f"{field.name}.list.element" if is_list else field.name
