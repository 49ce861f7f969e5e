import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fxrec.data.eventlog import EventLog, EventLogError, write_events
from fxrec.data.schema import DatasetSpec, FeatureSpec

SPEC = DatasetSpec(
    name="tiny",
    surfaces=["feed"],
    features=[FeatureSpec(name="item_id", kind="sparse", cardinality=10), FeatureSpec(name="price", kind="dense")],
)


def _table(n=5, **overrides):
    columns = {
        "event_id": np.arange(n, dtype=np.int64),
        "ts": 1_700_000_000 + np.arange(n, dtype=np.int64) * 40_000,
        "user_id": np.arange(n, dtype=np.int64) % 2,
        "item_id": np.arange(n, dtype=np.int64),
        "surface": ["feed"] * n,
        "click": np.array([1, 0, 0, 1, 0][:n], dtype=np.float32),
        "price": np.ones(n, dtype=np.float32),
    }
    columns.update(overrides)
    return pa.table(columns)


def test_written_log_is_partitioned_by_day_and_time_ordered(tmp_path):
    shuffled = _table().take(pa.array([4, 2, 0, 3, 1]))
    write_events(shuffled, SPEC, tmp_path / "events")
    log = EventLog(tmp_path / "events")
    assert len(log.days) == 3  # 5 events 40,000 s apart span three UTC days
    ts = log.read_all(["ts"]).column("ts").to_numpy()
    assert np.all(np.diff(ts) >= 0)
    assert log.num_rows() == 5
    assert log.spec == SPEC


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (_table().drop_columns(["item_id"]), "missing column 'item_id'"),
        (_table(user_id=["a", "b", "c", "d", "e"]), "column 'user_id' has type string, expected int64"),
        (_table(event_id=np.array([1, 1, 2, 3, 4])), "column 'event_id' has duplicate values"),
        (_table(surface=["feed", "feed", "tv", "feed", "feed"]), "not in the spec's surfaces"),
        (_table().slice(0, 0), "no rows"),
        (_table(click=np.array([1, 0, 2, 1, 0], dtype=np.float32)), "column 'click' has value 2.0; expected 0/1 labels"),
        (_table(conversion=pa.array([1, None, 0, 0, 0], pa.float32())), "column 'conversion' has 1 empty values"),
        (_table(label_like=np.ones(5)), None),  # a column that is not a label is not checked as one
    ],
)
def test_bad_input_names_source_and_column_and_writes_nothing(tmp_path, table, message):
    out = tmp_path / "events"
    write_events(_table(), SPEC, out)
    if message is None:
        write_events(table, SPEC, tmp_path / "other")
        return
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(EventLogError, match=message) as error:
        write_events(table, SPEC, out, source="upload.csv")
    assert "upload.csv" in str(error.value)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after
    assert [p.name for p in tmp_path.iterdir()] == ["events"]  # no temp folders left behind


def test_graded_label_columns_may_hold_any_value_but_no_gaps(tmp_path):
    """`label_*` columns that are not tasks (MovieLens's 1-5 `label_rating`) are graded; tasks are 0/1."""
    write_events(_table(label_rating=np.array([1, 5, 3, 4, 2], dtype=np.float32)), SPEC, tmp_path / "a")
    with pytest.raises(EventLogError, match="column 'label_rating' has 1 empty values"):
        write_events(_table(label_rating=pa.array([1, None, 3, 4, 2], pa.float32())), SPEC, tmp_path / "b")
    graded_task = SPEC.model_copy(update={"tasks": ["click", "label_rating"]})
    with pytest.raises(EventLogError, match="column 'label_rating' has value 5.0; expected 0/1"):
        write_events(_table(label_rating=np.array([1, 5, 0, 0, 1], dtype=np.float32)), graded_task, tmp_path / "c")


def test_reading_a_label_gap_is_an_error_not_a_negative(tmp_path):
    """A log changed after it was written (a missing click) fails on read, naming the day, never reads as 0."""
    log = EventLog(write_events(_table(), SPEC, tmp_path / "events"))
    day = log.days[0]
    table = log.read_day(day)
    pq.write_table(table.set_column(table.schema.get_field_index("click"), "click", pa.array([None] * table.num_rows, pa.float32())), log.day_files(day)[0])
    with pytest.raises(EventLogError, match=rf"day={day}: column 'click' has {table.num_rows} empty values"):
        log.read_day(day)
    assert log.read_day(log.days[1]).num_rows > 0  # the untouched days still read


def test_a_spec_that_is_not_one_names_the_file(tmp_path):
    out = write_events(_table(), SPEC, tmp_path / "events")
    (out / "spec.yaml").write_text("- just\n- a list\n")
    with pytest.raises(EventLogError, match=r"spec\.yaml: not a dataset spec"):
        EventLog(out)


def test_not_an_event_log(tmp_path):
    with pytest.raises(EventLogError, match="not an event log"):
        EventLog(tmp_path)


def test_parquet_row_order_within_day(tmp_path):
    table = _table(ts=np.full(5, 1_700_000_000, dtype=np.int64)).take(pa.array([3, 1, 4, 0, 2]))
    write_events(table, SPEC, tmp_path / "events")
    (day,) = EventLog(tmp_path / "events").days
    ids = pq.read_table(tmp_path / "events" / f"day={day}" / "part-0.parquet").column("event_id").to_pylist()
    assert ids == [0, 1, 2, 3, 4]  # ties in ts broken by event_id


def test_a_log_with_histories_needs_its_history_label_column(tmp_path):
    spec = SPEC.model_copy(update={
        "history_label": "label_purchase",
        "features": [*SPEC.features, FeatureSpec(name="hist_item_id", kind="sequence", source="item_id", table="item_id")],
    })
    with pytest.raises(EventLogError, match="upload.csv: missing column 'label_purchase'"):
        write_events(_table(), spec, tmp_path / "events", source="upload.csv")
    write_events(_table(label_purchase=np.zeros(5, np.float32)), spec, tmp_path / "events")
