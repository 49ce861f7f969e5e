"""Leak-free user histories: for each event, the user's last L positive events strictly before it.

Histories are derived from the log as it streams, never stored ahead of time. `HistoryTracker`
walks days in order and keeps only the last L positives of each user from earlier days, so memory
is bounded by users x L, not by the log.

The as-of lookup is vectorised: positives are sorted by (user, ts) into one key array and every
event finds, with one `searchsorted`, how many of its user's positives lie strictly before its ts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

HISTORY_TS = "history_ts"
_TS_BITS = 34  # 2^34 s is ~544 years of timestamps past the earliest one in a call


def _keys(user_code: np.ndarray, ts: np.ndarray, ts0: int) -> np.ndarray:
    return (user_code.astype(np.int64) << _TS_BITS) | (ts - ts0)


def _gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [s, s+n) for each (s, n), without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    within = np.arange(total, dtype=np.int64) - np.repeat(offsets, lengths)
    return np.repeat(starts, lengths) + within


class HistoryTracker:
    """Attaches `history_<...>` list columns to each day's events, in time order, without leaks.

    Args:
        length: L, the most history entries an event sees (the most recent ones, oldest first).
        sources: event columns (int64) collected into each history, e.g. ["item_id"].
        label: the label that makes an event a history entry (e.g. "click").
    """

    def __init__(self, length: int, sources: list[str], label: str = "click"):
        self.length = length
        self.sources = list(sources)
        self.label = label
        self._past = {"user_id": np.zeros(0, np.int64), "ts": np.zeros(0, np.int64)}
        self._past.update({s: np.zeros(0, np.int64) for s in self.sources})
        self._last_ts: int | None = None

    def attach(self, events: pa.Table) -> tuple[pa.Table, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Histories for one day (events sorted by ts, later than every earlier call's events).

        Returns the table unchanged plus {column: (offsets [N+1], values)} for each source and for
        `history_ts`; the caller turns those into features.
        """
        user = events.column("user_id").to_numpy()
        ts = events.column("ts").to_numpy()
        if len(ts) and self._last_ts is not None and ts.min() < self._last_ts:
            raise ValueError("HistoryTracker needs days in time order; got an event earlier than the previous day")
        positive = events.column(self.label).to_numpy(zero_copy_only=False) > 0
        clicks = {"user_id": user[positive], "ts": ts[positive]}
        clicks.update({s: events.column(s).to_numpy(zero_copy_only=False)[positive] for s in self.sources})
        clicks = {k: np.concatenate([self._past[k], v]) for k, v in clicks.items()}

        users, inverse = np.unique(np.concatenate([clicks["user_id"], user]), return_inverse=True)
        click_code, event_code = inverse[: len(clicks["user_id"])], inverse[len(clicks["user_id"]):]
        ts0 = int(min(clicks["ts"].min(initial=ts.min(initial=0)), ts.min(initial=0)))
        click_keys = _keys(click_code, clicks["ts"], ts0)
        order = np.argsort(click_keys, kind="stable")
        click_keys = click_keys[order]
        clicks = {k: v[order] for k, v in clicks.items()}
        click_code = click_code[order]

        # Strictly before: side="left" on (user, ts) counts positives with an earlier ts only.
        end = np.searchsorted(click_keys, _keys(event_code, ts, ts0), side="left")
        user_begin = np.searchsorted(click_keys, event_code.astype(np.int64) << _TS_BITS, side="left")
        lengths = np.minimum(end - user_begin, self.length)
        index = _gather_ranges(end - lengths, lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out = {s: (offsets, clicks[s][index]) for s in self.sources}
        out[HISTORY_TS] = (offsets, clicks["ts"][index])

        # Carry the last L positives per user into the next day.
        user_end = np.searchsorted(click_code, click_code, side="right")
        keep = (user_end - 1 - np.arange(len(click_code))) < self.length
        self._past = {k: v[keep] for k, v in clicks.items()}
        if len(ts):
            self._last_ts = int(ts.max())
        return events, out
