"""The clicks of an impression log, as the funnel's stages may see them on a given day.

Every stage of day t reads `Engagements.before(t)`: only clicks with ts strictly before day t's start
(UTC midnight), so nothing it builds can know what day t brings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fxrec.data.eventlog import EventLog, day_start_ts

DAY = 86400


@dataclass(frozen=True)
class Engagements:
    """Clicks as parallel arrays sorted by ts: who clicked what, when."""

    user: np.ndarray  # int64
    item: np.ndarray  # int64
    ts: np.ndarray  # int64

    @classmethod
    def from_log(cls, log: EventLog, label: str = "click") -> Engagements:
        users, items, ts = [], [], []
        for _, table in log.iter_days(["user_id", "item_id", "ts", label]):
            hit = table.column(label).to_numpy() > 0
            users.append(table.column("user_id").to_numpy()[hit])
            items.append(table.column("item_id").to_numpy()[hit])
            ts.append(table.column("ts").to_numpy()[hit])
        return cls.of(np.concatenate(users), np.concatenate(items), np.concatenate(ts))

    @classmethod
    def of(cls, user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> Engagements:
        order = np.argsort(ts, kind="stable")
        return cls(
            np.asarray(user, np.int64)[order],
            np.asarray(item, np.int64)[order],
            np.asarray(ts, np.int64)[order],
        )

    def __len__(self) -> int:
        return len(self.ts)

    def between(self, start: int, end: int) -> Engagements:
        """Clicks with start <= ts < end."""
        lo, hi = np.searchsorted(self.ts, [start, end], side="left")
        return Engagements(self.user[lo:hi], self.item[lo:hi], self.ts[lo:hi])

    def before(self, day: str, window_days: float | None = None) -> Engagements:
        """Clicks strictly before `day` starts; with `window_days`, only the last that many days of them."""
        end = day_start_ts(day)
        start = np.iinfo(np.int64).min if window_days is None else end - int(window_days * DAY)
        return self.between(start, end)

    def on(self, day: str) -> Engagements:
        """Day `day`'s clicks: what retrieval of that day is judged against."""
        start = day_start_ts(day)
        return self.between(start, start + DAY)
