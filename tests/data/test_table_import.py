"""Table import of real-world shapes: `::`-delimited files without a header, string categories,
millisecond timestamps, and clicks-only logs turned into impressions with sampled negatives."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from fxrec.data.eventlog import EventLog, EventLogError
from fxrec.data.sources import import_table

DAY_MS = 86_400_000
START_MS = 1_700_006_400_000


def _spec(tmp_path: Path, **options) -> Path:
    spec = {
        "name": "ratings",
        "surfaces": ["web"],
        "surface": "web",
        "features": [
            {"name": "user_id", "kind": "sparse", "cardinality": 1000},
            {"name": "item_id", "kind": "sparse", "cardinality": 1000},
            {"name": "gender", "kind": "sparse", "cardinality": 3},
            {"name": "genre", "kind": "sparse", "cardinality": 50},
        ],
        "timestamp_unit": "ms",
        **options,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _ratings_dat(path: Path, n: int = 60) -> Path:
    """MovieLens-1M style: `user::item::rating::ms::gender::genre`, no header, string categories."""
    rng = np.random.default_rng(3)
    lines = [
        f"u{i % 7}::{i % 11}::{rng.integers(1, 6)}::{START_MS + i * DAY_MS // 20}::{'FM'[i % 2]}::{['Drama', 'Comedy', 'Noir'][i % 11 % 3]}"
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


COLUMNS = ["user", "item_id", "rating", "ts", "gender", "genre"]


def test_dat_file_with_string_categories(tmp_path):
    spec = _spec(
        tmp_path,
        delimiter="::",
        column_names=COLUMNS,
        columns={"user_id": "user", "click": "rating"},
        click_threshold=4,
        encode={"user_id": "hash", "gender": "dict", "genre": "dict"},
    )
    log = EventLog(import_table(spec, [_ratings_dat(tmp_path / "ratings.dat")], tmp_path / "out"))
    frame = pl.from_arrow(log.read_all()).sort("event_id")
    assert frame.height == 60 and len(log.days) == 3  # ms timestamps read as seconds: 20 events a day
    assert sorted(frame["gender"].unique().to_list()) == [1, 2]  # 'F' -> 1, 'M' -> 2 (sorted dictionary)
    assert sorted(frame["genre"].unique().to_list()) == [1, 2, 3]
    assert frame["user_id"].n_unique() == 7 and frame["user_id"].min() >= 0  # hashed strings, one id each
    again = EventLog(import_table(spec, [_ratings_dat(tmp_path / "again.dat")], tmp_path / "out2"))
    assert pl.from_arrow(again.read_all())["user_id"].sort().equals(frame["user_id"].sort())  # stable hash


def test_string_category_without_encode_names_the_option(tmp_path):
    spec = _spec(tmp_path, delimiter="::", column_names=COLUMNS, columns={"user_id": "user", "click": "rating"},
                 click_threshold=4, encode={"user_id": "hash"})  # fmt: skip
    with pytest.raises(EventLogError, match=r"'gender'.*'F'.*int64"):
        import_table(spec, [_ratings_dat(tmp_path / "r.dat")], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _clicks_csv(path: Path) -> Path:
    """A clicks-only log: 2,000 clicks over 2 days, items 0..39 appearing over time, no click column."""
    rng = np.random.default_rng(5)
    n = 2000
    ts = np.sort(START_MS + rng.integers(0, 2 * DAY_MS, n))
    item = np.minimum(rng.integers(0, 40, n), (np.arange(n) // 50))  # item k first appears around row 50k
    pl.DataFrame(
        {"user_id": rng.integers(0, 30, n), "item_id": item, "ts": ts, "gender": rng.integers(1, 3, n), "genre": item % 7}
    ).write_csv(path)
    return path


@pytest.mark.parametrize("pool", ["same_hour_pool", "catalogue"])
def test_negatives_turn_clicks_into_impressions_without_looking_ahead(tmp_path, pool):
    spec = _spec(tmp_path, negatives={"per_positive": 4, "from": pool, "item_columns": ["genre"]})
    log = EventLog(import_table(spec, [_clicks_csv(tmp_path / "clicks.csv")], tmp_path / "out"))
    frame = pl.from_arrow(log.read_all())
    positives, negatives = frame.filter(pl.col("click") == 1), frame.filter(pl.col("click") == 0)
    assert positives.height == 2000
    assert 0.7 * 8000 < negatives.height <= 8000  # own-item draws are dropped
    assert (negatives["genre"] == negatives["item_id"] % 7).all()  # item columns follow the sampled item
    first_seen = positives.group_by("item_id").agg(pl.col("ts").min().alias("first"))
    joined = negatives.join(first_seen, on="item_id", how="left")
    assert joined["first"].null_count() == 0 and (joined["first"] <= joined["ts"]).all()  # never a future item
    if pool == "same_hour_pool":
        shown = negatives.join(positives.select("item_id", pl.col("ts").alias("pos_ts")), on="item_id")
        near = shown.filter((pl.col("pos_ts") <= pl.col("ts")) & (pl.col("pos_ts") >= pl.col("ts") - 3600))
        assert near.select(["event_id"]).n_unique() == negatives.height  # drawn from the last hour's clicks
    assert frame["event_id"].sort().to_list() == list(range(frame.height))


def test_negatives_refuse_a_log_with_non_clicks(tmp_path):
    path = _clicks_csv(tmp_path / "clicks.csv")
    pl.read_csv(path).with_columns(click=pl.lit(0)).write_csv(path)
    spec = _spec(tmp_path, negatives={"per_positive": 2})
    with pytest.raises(EventLogError, match="already has non-clicks"):
        import_table(spec, [path], tmp_path / "out")
    assert not (tmp_path / "out").exists()
