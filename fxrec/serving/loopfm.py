"""LoopFM at serving time: the user's recent FM representation codes, from the publish log.

A LoopFM VM reads, per event, the compressed FM representations of the user's earlier events (within
a retention window, the newest `max_len`). Offline those come from `fxrec publish`; the server loads
the newest `keep` codes per user from the same files at start-up and cuts each request's sequence as
of its ts with the rule training used (`fxrec.transfer.asof.recent_entries`: entries strictly before
ts, within retention, newest max_len).
The log is not extended online (that needs the FM's autoencoder on the request stream), so every
sequence the server finds is reported as "stale".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from fxrec.transfer.asof import recent_entries


class LoopFMLog:
    def __init__(self, histories: dict[int, tuple[np.ndarray, np.ndarray]], width: int):
        self.histories = histories  # user -> (ts (L,) ascending, codes (L, c) int8)
        self.width = width

    @classmethod
    def from_publish(cls, directory: Path, keep: int = 200) -> LoopFMLog:
        files = sorted(Path(directory).glob("day=*.parquet"))
        if not files:
            raise FileNotFoundError(
                f"{directory}: no published days (day=*.parquet); run `fxrec publish` first"
            )
        frame = pl.concat([pl.read_parquet(f, columns=["user_id", "ts", "loopfm"]) for f in files])
        frame = frame.sort("ts", maintain_order=True).group_by("user_id", maintain_order=True).tail(keep)
        grouped = frame.group_by("user_id", maintain_order=True).agg(pl.col("ts"), pl.col("loopfm"))
        histories: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        width = 0
        for user, ts, codes in grouped.iter_rows():
            array = np.asarray(codes, dtype=np.int8)
            width = array.shape[1]
            histories[int(user)] = (np.asarray(ts, dtype=np.int64), array)
        return cls(histories, width)

    def sequence(
        self, user_id: int, ts: int, max_len: int, retention_days: float, code_dim: int
    ) -> np.ndarray:
        """(L, code_dim) int8: the user's codes as of ts, cut by `asof.recent_entries` as in training."""
        entry = self.histories.get(user_id)
        if entry is None:
            return np.zeros((0, code_dim), np.int8)
        entry_ts, codes = entry
        owner = np.zeros(len(entry_ts), np.int64)
        keep = recent_entries(owner, entry_ts, np.array([ts], np.int64), max_len, retention_days)
        return codes[keep][:, :code_dim]
