import numpy as np
import pyarrow as pa
import pytest
import torch

from fxrec.data.batches import EventFrame, hash_rows
from fxrec.data.eventlog import EventLog, write_events
from fxrec.data.reader import iter_frames
from fxrec.data.schema import DatasetSpec, FeatureSpec

SPEC = DatasetSpec(
    name="t",
    surfaces=["feed", "video"],
    history_length=2,
    features=[
        FeatureSpec(name="item_id", kind="sparse", cardinality=11),
        FeatureSpec(name="tags", kind="multi", cardinality=5),
        FeatureSpec(name="price", kind="dense"),
        FeatureSpec(name="hist_item_id", kind="sequence", source="item_id", table="item_id"),
    ],
)


def _log(tmp_path):
    table = pa.table({
        "event_id": np.arange(6, dtype=np.int64),
        "ts": np.array([10, 20, 30, 40, 50, 60], dtype=np.int64) + 1_700_000_000,
        "user_id": np.array([1, 1, 2, 1, 2, 1], dtype=np.int64),
        "item_id": pa.array([3, 4, 5, 9, 7, 12], pa.int64()),
        "surface": ["feed", "video", "feed", "video", "feed", "feed"],
        "click": np.array([1, 1, 1, 0, 0, 1], dtype=np.float32),
        "tags": pa.array([[1, 2], [], None, [3], [4, 4, 4], [0]], pa.list_(pa.int64())),
        "price": pa.array([1.0, None, 2.0, 3.0, float("nan"), 4.0], pa.float32()),
    })
    write_events(table, SPEC, tmp_path / "events")
    return EventLog(tmp_path / "events")


def test_hash_rows_keeps_row_zero_for_missing():
    rows = hash_rows(np.array([0, 9, 10, 23, -1]), 11, valid=np.array([True, True, True, True, False]))
    assert rows.tolist() == [1, 10, 1, 4, 0]


def test_frame_builds_kjt_dense_labels_and_history(tmp_path):
    log = _log(tmp_path)
    (_, frame), = list(iter_frames(log, SPEC.features))
    batch = frame.batch(0, 6)
    sparse = batch.sparse.to_dict()
    assert sparse["item_id"].values().tolist() == [4, 5, 6, 10, 8, 3]  # 12 -> 1 + 12 % 10
    assert sparse["tags"].lengths().tolist() == [2, 0, 0, 1, 3, 1]  # a null list is an empty bag
    assert batch.dense[:, 0].tolist() == [1.0, 0.0, 2.0, 3.0, 0.0, 4.0]  # null and NaN -> 0
    history = batch.sequences.to_dict()["hist_item_id"]
    # user 1 clicks items 3 (ts 10), 4 (ts 20); event 3 (ts 40) sees both, event 5 (ts 60) the last two.
    assert history.lengths().tolist() == [0, 1, 0, 2, 1, 2]
    assert history.values().tolist() == [4, 4, 5, 6, 4, 5]
    assert batch.sequence_ages.tolist() == [10.0, 30.0, 20.0, 20.0, 50.0, 40.0]
    assert batch.meta["surface"].tolist() == [0, 1, 0, 1, 0, 0]


def test_take_matches_batch_for_any_row_order(tmp_path):
    (_, frame), = list(iter_frames(_log(tmp_path), SPEC.features))
    rows = torch.tensor([5, 0, 3, 1])
    taken = frame.take(rows)
    singles = [frame.batch(int(r), int(r) + 1) for r in rows]
    assert taken.sparse.values().tolist() == (
        [int(s.sparse.to_dict()["item_id"].values()) for s in singles]
        + sum((s.sparse.to_dict()["tags"].values().tolist() for s in singles), [])
    )
    assert taken.sequences.lengths().tolist() == [int(s.sequences.lengths()[0]) for s in singles]
    assert torch.equal(taken.labels["click"], torch.cat([s.labels["click"] for s in singles]))


def test_surface_filter_keeps_cross_surface_history(tmp_path):
    (_, frame), = list(iter_frames(_log(tmp_path), SPEC.features, surfaces=["feed"]))
    batch = frame.batch(0, frame.num_rows)
    assert batch.meta["event_id"].tolist() == [0, 2, 4, 5]
    # Event 5 (feed) still sees user 1's click on video (item 4).
    assert batch.sequences.to_dict()["hist_item_id"].lengths().tolist() == [0, 0, 1, 2]


def test_sequence_features_without_history_fail_clearly(tmp_path):
    log = _log(tmp_path)
    table = log.read_day(log.days[0])
    with pytest.raises(ValueError, match="need histories"):
        EventFrame(table, SPEC, SPEC.features, history=None)
