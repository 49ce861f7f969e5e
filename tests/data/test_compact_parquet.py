"""Compact Parquet: the same table back (schema, values, bit for bit), in fewer bytes than the default."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fxrec.data.compact_parquet import column_encodings, write_compact


def _table(rows: int = 5000) -> pa.Table:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(rows, 8)).astype(np.float32)
    vectors[3, 2] = np.nan
    return pa.table(
        {
            "event_id": np.arange(rows, dtype=np.int64) * 3 + 100,
            "user_id": rng.integers(0, 50, rows),
            "ts": np.sort(rng.integers(1_700_000_000, 1_700_086_400, rows)),
            "trained_through": pa.array(["2024-01-02"] * rows),
            "label_click": (rng.random(rows) < 0.1).astype(np.float32),
            "pred_click": rng.random(rows).astype(np.float32),
            "maybe": pa.array([None if i % 7 == 0 else i for i in range(rows)], pa.int64()),
            "user": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 8),
            "loopfm": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.integers(-8, 8, rows * 4).astype(np.int8)), 4
            ),
        }
    )


def test_the_table_comes_back_bit_for_bit_and_smaller(tmp_path):
    table = _table()
    write_compact(table, tmp_path / "compact.parquet")
    pq.write_table(table, tmp_path / "plain.parquet")
    back = pq.read_table(tmp_path / "compact.parquet")
    assert back.schema.equals(table.schema, check_metadata=False)
    for name in table.column_names:
        if name != "user":  # NaN != NaN in a list comparison: the vectors are compared by their bits below
            assert back[name].to_pylist() == table[name].to_pylist(), name
    got, want = (np.stack(t["user"].to_numpy(zero_copy_only=False)).view(np.uint32) for t in (back, table))
    np.testing.assert_array_equal(got, want)  # NaN included
    assert (tmp_path / "compact.parquet").stat().st_size < (tmp_path / "plain.parquet").stat().st_size


def test_encodings_follow_the_values():
    assert column_encodings(_table()) == {
        "event_id": "DELTA_BINARY_PACKED",
        "ts": "DELTA_BINARY_PACKED",
        "pred_click": "BYTE_STREAM_SPLIT",
        "user.list.element": "BYTE_STREAM_SPLIT",
    }
