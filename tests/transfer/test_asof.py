"""The LoopFM as-of cut, one function for training and serving, against the rule written out."""

from __future__ import annotations

import numpy as np

from fxrec.serving.loopfm import LoopFMLog
from fxrec.transfer.asof import DAY_SECONDS, recent_entries


def _reference(entry_ts: np.ndarray, ts: int, max_len: int, retention_days: float) -> np.ndarray:
    """Indices of the entries strictly before ts, within retention, newest max_len, oldest first."""
    kept = [i for i, t in enumerate(entry_ts) if t < ts and ts - t <= retention_days * DAY_SECONDS]
    return np.array(kept[-max_len:] if max_len else [], np.int64)


def test_recent_entries_matches_the_rule_row_by_row():
    rng = np.random.default_rng(0)
    rows, owner, entry_ts = 40, [], []
    event_ts = rng.integers(5 * DAY_SECONDS, 6 * DAY_SECONDS, rows)
    for row in range(rows):
        count = int(rng.integers(0, 12))
        owner += [row] * count
        # around the event: some entries at or after it (which the cut must drop), some past retention
        entry_ts += sorted(int(event_ts[row]) + int(d) for d in rng.integers(-3 * DAY_SECONDS, 60, count))
        if count and row % 3 == 0:
            entry_ts[-1] = int(event_ts[row])  # an entry at exactly the event's ts
    owner_array, entry_array = np.array(owner, np.int64), np.array(entry_ts, np.int64)
    for max_len, retention in ((1, 1.0), (3, 1.5), (50, 2.5)):
        keep = recent_entries(owner_array, entry_array, event_ts, max_len, retention)
        for row in range(rows):
            mine = np.flatnonzero(owner_array == row)
            expected = mine[_reference(entry_array[mine], int(event_ts[row]), max_len, retention)]
            np.testing.assert_array_equal(np.flatnonzero(keep & (owner_array == row)), expected)


def test_the_serving_log_cuts_with_the_same_rule():
    entry_ts = np.array([100, 200, 300, 300 + DAY_SECONDS, 400 + DAY_SECONDS], np.int64)
    codes = np.arange(10, dtype=np.int8).reshape(5, 2)
    log = LoopFMLog({7: (entry_ts, codes)}, width=2)
    for ts in (50, 200, 301, 300 + DAY_SECONDS, 401 + DAY_SECONDS, 10 * DAY_SECONDS):
        for max_len in (1, 2, 10):
            got = log.sequence(7, ts, max_len, retention_days=1.0, code_dim=1)
            np.testing.assert_array_equal(got, codes[_reference(entry_ts, ts, max_len, 1.0)][:, :1])
