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


def _conversion_day(rows):
    """rows: (user, ts, item, delay or None); a conversion where the delay is given."""
    users, ts, items, delays = zip(*rows, strict=True) if rows else ([], [], [], [])
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "ts": pa.array(ts, pa.int64()),
        "item_id": pa.array(items, pa.int64()),
        "conversion": pa.array([0.0 if d is None else 1.0 for d in delays], pa.float32()),
        "conversion_delay_s": pa.array(delays, pa.float32()),
    })


conversions = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 50), st.integers(0, 1000), st.one_of(st.none(), st.floats(0, 250, width=32))),
    min_size=0,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(days=st.lists(conversions, min_size=1, max_size=4), length=st.integers(1, 4))
def test_conversion_history_holds_the_last_conversions_that_happened_before(days, length):
    """A delayed history label enters at ts + delay, even when that is days later (delays span days here)."""
    tracker = HistoryTracker(length, ["item_id"], label="conversion")
    seen: list[tuple[int, float, int]] = []  # (user, conversion time, item) of every conversion so far
    for day_index, rows in enumerate(days):
        rows = sorted(((u, t + 100 * day_index, i, d) for u, t, i, d in rows), key=lambda r: r[1])
        _, history = tracker.attach(_conversion_day(rows))
        offsets, items = history["item_id"]
        _, stamps = history[HISTORY_TS]
        seen += [(u, t + float(np.float32(d)), i) for u, t, i, d in rows if d is not None]
        for row, (user, ts, _, _) in enumerate(rows):
            got = sorted(zip(stamps[offsets[row] : offsets[row + 1]].tolist(), items[offsets[row] : offsets[row + 1]].tolist(), strict=True))
            earlier = sorted((int(np.floor(c)), i) for u, c, i in seen if u == user and c < ts)
            assert [t for t, _ in got] == [t for t, _ in earlier[-length:]], "not the last conversions before the event"
            assert all(t < ts for t, _ in got), "a conversion in the history had not happened yet"


def test_a_conversion_still_pending_at_day_end_does_not_evict_older_ones():
    tracker = HistoryTracker(1, ["item_id"], label="conversion")
    tracker.attach(_conversion_day([(1, 100, 7, 10.0), (1, 200, 8, 5 * 86400.0)]))  # item 8 converts days later
    _, history = tracker.attach(_conversion_day([(1, 86400 + 50, 9, None)]))
    assert history["item_id"][1].tolist() == [7]
    _, history = tracker.attach(_conversion_day([(1, 6 * 86400, 9, None)]))
    assert history["item_id"][1].tolist() == [8]


def test_a_history_label_missing_from_the_log_is_a_clear_error():
    tracker = HistoryTracker(3, ["item_id"], label="label_purchase")
    try:
        tracker.attach(_day([(1, 100, 1, 1.0)]))
    except ValueError as error:
        assert "history_label 'label_purchase' is not a column" in str(error)
    else:
        raise AssertionError("a history label that is not a column must fail")
