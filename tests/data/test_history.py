"""User histories must never contain the event itself or anything at or after its timestamp."""

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from fxrec.data.history import HISTORY_TS, HistoryTracker


def _day(rows):
    users, ts, items, clicks = zip(*rows, strict=True) if rows else ([], [], [], [])
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "ts": pa.array(ts, pa.int64()),
        "item_id": pa.array(items, pa.int64()),
        "click": pa.array(clicks, pa.float32()),
    })


events = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 50), st.integers(0, 1000), st.sampled_from([0.0, 1.0])),
    min_size=0,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(days=st.lists(events, min_size=1, max_size=4), length=st.integers(1, 5))
def test_history_is_exactly_the_last_clicks_strictly_before(days, length):
    tracker = HistoryTracker(length, ["item_id"])
    seen: list[tuple[int, int, int]] = []  # (user, ts, item) of every click so far
    for day_index, rows in enumerate(days):
        # Days are time-ordered: shift each day after the previous one; sort within the day.
        rows = sorted(((u, t + 100 * day_index, i, c) for u, t, i, c in rows), key=lambda r: r[1])
        table = _day(rows)
        _, history = tracker.attach(table)
        offsets, items = history["item_id"]
        _, stamps = history[HISTORY_TS]
        day_clicks = [(u, t, i) for u, t, i, c in rows if c > 0]
        everything = seen + day_clicks
        for row, (user, ts, _, _) in enumerate(rows):
            got_ts = stamps[offsets[row] : offsets[row + 1]]
            got_items = items[offsets[row] : offsets[row + 1]]
            assert np.all(got_ts < ts), "a history entry is at or after the event's own timestamp"
            assert np.all(np.diff(got_ts) >= 0), "history must be oldest-first"
            # The last `length` clicks before ts; clicks in the same second keep log (event_id) order.
            earlier = [(t, i) for u, t, i in everything if u == user and t < ts]
            expected = sorted(earlier, key=lambda entry: entry[0])[-length:]
            assert list(zip(got_ts.tolist(), got_items.tolist(), strict=True)) == expected
        seen += day_clicks


def test_own_click_is_not_in_own_history():
    table = _day([(1, 10, 7, 1.0), (1, 10, 8, 1.0), (1, 11, 9, 0.0)])
    _, history = HistoryTracker(5, ["item_id"]).attach(table)
    offsets, items = history["item_id"]
    assert offsets.tolist() == [0, 0, 0, 2]  # same-ts clicks are not "before" each other
    assert sorted(items.tolist()) == [7, 8]


def test_days_out_of_order_are_rejected():
    tracker = HistoryTracker(3, ["item_id"])
    tracker.attach(_day([(1, 100, 1, 1.0)]))
    try:
        tracker.attach(_day([(1, 50, 2, 1.0)]))
    except ValueError as error:
        assert "time order" in str(error)
    else:
        raise AssertionError("an earlier day after a later one must fail")
