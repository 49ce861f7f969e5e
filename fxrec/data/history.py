"""Leak-free user histories: for each event, the user's last L positive events strictly before it.

Histories are derived from the log as it streams, never stored ahead of time. `HistoryTracker`
walks days in order and keeps only the last L positives of each user from earlier days, so memory
is bounded by users x L, not by the log.

A delayed history label (one with a `<label>_delay_s` column, e.g. conversion) enters the history
when it happens, at `ts + delay`: an event sees it only if it happened strictly before the event's
ts, and the entry's `history_ts` is that moment. Click histories (no delay) are unchanged.

The as-of lookup is vectorised: positives are sorted by (user, ts) into one key array and every
event finds, with one `searchsorted`, how many of its user's positives lie strictly before its ts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from fxrec.data.labels import delay_column

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
        label: the label that makes an event a history entry (e.g. "click"); if the events have a
            `<label>_delay_s` column, an entry counts from `ts + delay` on.
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
        if self.label not in events.column_names:
            raise ValueError(
                f"history_label {self.label!r} is not a column of the events; columns: {events.column_names}"
            )
        positive = events.column(self.label).to_numpy(zero_copy_only=False) > 0
        clicks = {"user_id": user[positive], "ts": self._observed_ts(events, ts)[positive]}
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

        # Carry into the next day every entry not yet observed by the day's last event (delayed labels)
        # and the last L per user of the others: later events see all of those, so older ones never count.
        day_end = int(ts.max()) if len(ts) else (self._last_ts if self._last_ts is not None else 0)
        settled = clicks["ts"] < day_end
        settled_rank = np.cumsum(settled[::-1])[::-1]  # settled entries at or after each row (sorted)
        user_end = np.searchsorted(click_code, click_code, side="right")
        later_settled = settled_rank - np.append(settled_rank, 0)[user_end]  # same user, at or after
        keep = ~settled | (later_settled <= self.length)
        self._past = {k: v[keep] for k, v in clicks.items()}
        if len(ts):
            self._last_ts = int(ts.max())
        return events, out

    def _observed_ts(self, events: pa.Table, ts: np.ndarray) -> np.ndarray:
        """(N,) int64 second each event's label became known: ts, plus the delay if the label has one.

        Floored: for integer event times, floor(ts + delay) < t exactly when ts + delay < t.
        """
        column = delay_column(self.label)
        if column not in events.column_names:
            return ts
        delay = events.column(column).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        return np.floor(ts + delay).astype(np.int64)
