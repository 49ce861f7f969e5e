"""Each user's ALURE-style embedding as of the start of a day: the FM's published user tower.

`fxrec publish` writes, for every event of day d, the user embedding of the FM snapshot trained
through the day before d (`fm_version`). At the start of day t, what the embedding store holds for a
user is the last of those writes before day t: the output of the snapshot trained through day t-2 on
the user's last event of day t-1 (for a user seen that day; older writes for the others). That is
what the user graph of day t is built from: nothing published on day t or later is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fxrec.data.eventlog import day_start_ts


def published_user_embeddings(
    publish_dir: Path | str, day: str, max_age_days: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users (n,) sorted, vectors (n, d) float32, write ts (n,)) of every user's latest published
    embedding with ts strictly before `day` starts (only writes of the last `max_age_days`, if set)."""
    directory = Path(publish_dir)
    start = day_start_ts(day)
    files = sorted(p for p in directory.glob("day=*.parquet") if p.stem.removeprefix("day=") < day)
    if max_age_days is not None:
        oldest = start - int(max_age_days * 86400)
        files = [p for p in files if day_start_ts(p.stem.removeprefix("day=")) + 86400 > oldest]
    users, vectors, ts = [], [], []
    for path in files:
        table = pq.read_table(path, columns=["user_id", "ts", "user"])
        column = table.column("user").combine_chunks()
        width = column.type.list_size
        users.append(table.column("user_id").to_numpy())
        ts.append(table.column("ts").to_numpy())
        vectors.append(column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width))
    if not users:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    user, write_ts, vector = np.concatenate(users), np.concatenate(ts), np.concatenate(vectors)
    keep = write_ts < start
    if max_age_days is not None:
        keep &= write_ts >= start - int(max_age_days * 86400)
    user, write_ts, vector = user[keep], write_ts[keep], vector[keep]
    order = np.lexsort((np.arange(len(user)), write_ts, user))  # ties in ts: the later row wins
    last = order[np.r_[user[order][1:] != user[order][:-1], True]] if len(order) else order
    return user[last].astype(np.int64), vector[last], write_ts[last].astype(np.int64)
