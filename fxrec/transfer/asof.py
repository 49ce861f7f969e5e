"""As-of rules: which of the FM's published outputs an event at time ts may see.

A VM must read at training time exactly what it will read when serving, so every rule here is one
function that both paths call: `PublishedFM` (fxrec/transfer/published.py) over a frame of events,
and the serving sources (fxrec/serving/) for one request at its ts.
"""

from __future__ import annotations

import numpy as np

DAY_SECONDS = 86_400


def recent_entries(
    owner: np.ndarray, entry_ts: np.ndarray, event_ts: np.ndarray, max_len: int, retention_days: float
) -> np.ndarray:
    """The LoopFM cut: a keep mask over history entries, those strictly before their event's ts,
    within `retention_days` of it, and the newest `max_len` of those.

    owner (N,): the event (row of `event_ts`) each entry belongs to; entries are grouped by owner
    (ascending) and oldest first within an owner. entry_ts (N,) and event_ts (n,) are seconds.
    """
    age = event_ts[owner] - entry_ts
    keep = (age > 0) & (age <= retention_days * DAY_SECONDS)
    # The newest max_len of the kept entries: rank each kept entry from its owner's end.
    kept_per_row = np.bincount(owner[keep], minlength=len(event_ts))
    rank_from_end = np.zeros(len(owner), np.int64)
    kept_index = np.flatnonzero(keep)
    row_end = np.cumsum(kept_per_row)
    rank_from_end[kept_index] = row_end[owner[kept_index]] - 1 - np.arange(len(kept_index))
    return keep & (rank_from_end < max_len)
