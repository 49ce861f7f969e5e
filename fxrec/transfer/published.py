"""Reading what `fxrec publish` wrote, joined onto a VM's events as of each event's ts.

The publish directory holds one Parquet file per day: for every event of that day, the outputs of
the FM snapshot that was current for it (`fm_version`, trained strictly before the day). `PublishedFM`
walks those days in time order (as the trainer walks the log) and keeps two pieces of state, both
built only from earlier events:

- the user-embedding ring: per user, the last write of each of the last k FM versions (what the
  embedding store holds) -- an event sees the user's latest write strictly before its ts, plus the
  final writes of older versions, for stabilization;
- the LoopFM history: per user, the rows of their last L published events strictly before ts.

All joins are vectorised: event ids by `searchsorted`, as-of lookups by (user, ts) keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from fxrec.data.batches import EventFrame
from fxrec.data.history import HISTORY_TS, HistoryTracker, _gather_ranges
from fxrec.transfer.asof import DAY_SECONDS as DAY_SECONDS  # the retention unit, as before
from fxrec.transfer.asof import recent_entries

PUBLISH_META = "publish.yaml"


def _fixed_list(column: pa.ChunkedArray, dtype: np.dtype) -> np.ndarray:
    array = column.combine_chunks()
    width = array.type.list_size
    return array.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(-1, width)


def last_row_per_user(users: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row index of each user's latest event (ties in ts: the later row), one per distinct user."""
    order = np.lexsort((ts, users))
    return order[np.r_[users[order][1:] != users[order][:-1], True]]


@dataclass
class _Ring:
    """Per user (sorted), newest first: the last write of each of the last K FM versions."""

    users: np.ndarray  # (M,)
    vectors: np.ndarray  # (M, K, d)
    versions: np.ndarray  # (M, K) int64, -1 = empty
    ts: np.ndarray  # (M, K) int64

    @classmethod
    def empty(cls, keep: int, dim: int) -> _Ring:
        return cls(np.zeros(0, np.int64), np.zeros((0, keep, dim), np.float32), np.zeros((0, keep), np.int64), np.zeros((0, keep), np.int64))

    def merge(self, users: np.ndarray, vectors: np.ndarray, versions: np.ndarray, ts: np.ndarray) -> _Ring:
        """Add one write per user (users unique): same version as the newest -> replace it, else push."""
        all_users = np.union1d(self.users, users)
        keep, dim = self.versions.shape[1], self.vectors.shape[2]
        out = _Ring(all_users, np.zeros((len(all_users), keep, dim), np.float32), np.full((len(all_users), keep), -1, np.int64), np.zeros((len(all_users), keep), np.int64))
        old = np.searchsorted(all_users, self.users)
        out.vectors[old], out.versions[old], out.ts[old] = self.vectors, self.versions, self.ts
        at = np.searchsorted(all_users, users)
        push = out.versions[at, 0] != versions
        pushed = at[push]
        out.vectors[pushed, 1:] = out.vectors[pushed, :-1]
        out.versions[pushed, 1:] = out.versions[pushed, :-1]
        out.ts[pushed, 1:] = out.ts[pushed, :-1]
        out.vectors[at, 0], out.versions[at, 0], out.ts[at, 0] = vectors, versions, ts
        return out


@dataclass
class _Day:
    day: str
    event_ids: np.ndarray  # sorted
    order: np.ndarray  # row of each sorted event id
    columns: dict[str, np.ndarray]  # per-row arrays
    previous_write: np.ndarray | None  # per row: the same user's latest row with ts < this ts, or -1
    ring: _Ring | None  # the ring as of the start of this day
    loop: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # (offsets, global code rows, ts) per row


class FrameView:
    """One VM frame's events joined with the published day they belong to."""

    def __init__(self, state: _Day | None, frame: EventFrame, codes: np.ndarray | None, dims: dict[str, int]):
        self.state = state
        self.dims = dims
        self._codes = codes
        ids = frame.meta["event_id"].numpy()
        self.event_ts = frame.meta["ts"].numpy()
        if state is None or len(state.event_ids) == 0:
            self.rows = np.full(len(ids), -1, dtype=np.int64)
        else:
            position = np.minimum(np.searchsorted(state.event_ids, ids), len(state.event_ids) - 1)
            self.rows = np.where(state.event_ids[position] == ids, state.order[position], -1)
        self.found = torch.from_numpy(self.rows >= 0)

    def _pick(self, name: str) -> np.ndarray:
        assert self.state is not None
        values = self.state.columns[name]
        out = np.zeros((len(self.rows), *values.shape[1:]), dtype=np.float32)
        hit = self.rows >= 0
        out[hit] = values[self.rows[hit]]
        return out

    def column(self, name: str) -> torch.Tensor:
        """(n,) float32 per-event published value (e.g. logit_click); 0 where not published."""
        if self.state is None:
            return torch.zeros(len(self.rows))
        return torch.from_numpy(self._pick(name))

    def vectors(self, name: str) -> torch.Tensor:
        """(n, d) per-event published vectors (e.g. tae); zeros where not published."""
        if self.state is None:
            return torch.zeros(len(self.rows), self.dims[name])
        return torch.from_numpy(self._pick(name))

    def user_embeddings(self, k: int = 1) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(n, d_u) mean of the user's last k stored versions as of each event, found (n,), and the
        write ts of the newest entry used ((n,) int64, -1 where none) -- always < the event's ts."""
        state = self.state
        n = len(self.rows)
        if state is None or state.ring is None or state.previous_write is None:
            return torch.zeros(n, self.dims["user"]), torch.zeros(n, dtype=torch.bool), np.full(n, -1)
        ring, dim = state.ring, state.columns["user"].shape[1]
        keep = ring.versions.shape[1]
        hit = self.rows >= 0
        rows = np.where(hit, self.rows, 0)
        previous = np.where(hit, state.previous_write[rows], -1)
        user = state.columns["user_id"][rows]
        slot = np.minimum(np.searchsorted(ring.users, user), max(len(ring.users) - 1, 0))
        in_ring = hit & (ring.users[slot] == user) if len(ring.users) else np.zeros(n, bool)
        candidates = np.zeros((n, 1 + keep, dim), np.float32)
        valid = np.zeros((n, 1 + keep), bool)
        written = np.full((n, 1 + keep), -1, np.int64)
        today = previous >= 0
        candidates[today, 0] = state.columns["user"][previous[today]]
        written[today, 0] = state.columns["ts"][previous[today]]
        valid[:, 0] = today
        today_version = np.where(today, state.columns["fm_version"][np.maximum(previous, 0)], -2)
        if len(ring.users):
            candidates[in_ring, 1:] = ring.vectors[slot[in_ring]]
            written[in_ring, 1:] = ring.ts[slot[in_ring]]
            versions = ring.versions[slot]
            valid[:, 1:] = in_ring[:, None] & (versions >= 0) & (versions != today_version[:, None])
        use = valid & (np.cumsum(valid, axis=1) <= k)
        count = use.sum(axis=1)
        mean = (candidates * use[:, :, None]).sum(axis=1) / np.maximum(count, 1)[:, None]
        newest = np.where(count > 0, written[np.arange(n), np.argmax(use, axis=1)], -1)
        return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(count > 0), newest

    def loopfm_sequences(self, max_len: int, retention_days: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The user's codes from earlier published events only: (offsets (n+1,), codes (total, c) int8,
        ts (total,) of each entry), oldest first, cut by `asof.recent_entries` (the rule serving uses)."""
        state, n = self.state, len(self.rows)
        if state is None or state.loop is None or self._codes is None:
            width = self.dims.get("loopfm", 0)
            return torch.zeros(n + 1, dtype=torch.int64), torch.zeros(0, width, dtype=torch.int8), np.zeros(0, np.int64)
        offsets, code_rows, entry_ts = state.loop
        hit = self.rows >= 0
        rows = np.where(hit, self.rows, 0)
        lengths = np.where(hit, np.diff(offsets)[rows], 0)
        index = _gather_ranges(offsets[:-1][rows], lengths)
        owner = np.repeat(np.arange(n), lengths)
        keep = recent_entries(owner, entry_ts[index], self.event_ts, max_len, retention_days)
        new_lengths = np.bincount(owner[keep], minlength=n)
        new_offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64)
        chosen = index[keep]
        return torch.from_numpy(new_offsets), torch.from_numpy(self._codes[code_rows[chosen]]), entry_ts[chosen]


class PublishedFM:
    """A publish directory, walked day by day in time order; `view(frame)` joins a VM frame onto it."""

    def __init__(self, directory: Path | str, keep_versions: int = 5, loopfm_length: int = 50):
        self.directory = Path(directory)
        meta_path = self.directory / PUBLISH_META
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.directory} is not a publish directory (no {PUBLISH_META}); run `fxrec publish` first")
        self.meta = yaml.safe_load(meta_path.read_text())
        self.dims: dict[str, int] = dict(self.meta["dims"])
        self.tasks: list[str] = list(self.meta["tasks"])
        self.days = sorted(p.name.removeprefix("day=").removesuffix(".parquet") for p in self.directory.glob("day=*.parquet"))
        self.keep_versions = keep_versions
        self._ring = _Ring.empty(keep_versions, self.dims["user"]) if "user" in self.dims else None
        self._loop = HistoryTracker(loopfm_length, ["row"], label="entry") if "loopfm" in self.dims else None
        self._codes = np.zeros((0, self.dims.get("loopfm", 0)), np.int8)
        self._code_count = 0
        self._current: _Day | None = None
        self._last_view: tuple[EventFrame, FrameView] | None = None

    def view(self, frame: EventFrame) -> FrameView:
        day = getattr(frame, "day", None)
        if day is None:
            raise ValueError("PublishedFM.view needs a frame from iter_frames (it carries its day)")
        if self._last_view is not None and self._last_view[0] is frame:
            return self._last_view[1]  # several channels join the same frame: one lookup serves them all
        self._advance_to(day)
        state = self._current if self._current is not None and self._current.day == day else None
        view = FrameView(state, frame, self._codes[: self._code_count] if self._loop is not None else None, self.dims)
        self._last_view = (frame, view)
        return view

    def _advance_to(self, day: str) -> None:
        if self._current is not None and day < self._current.day:
            raise ValueError(f"PublishedFM walks forward only: asked for {day} after {self._current.day}")
        for published in self.days:
            if published > day:
                break
            if self._current is not None and published <= self._current.day:
                continue
            self._finish_current()
            self._current = self._load(published)

    def _finish_current(self) -> None:
        """The day is over: its last write per user joins the ring (what the store holds now)."""
        state = self._current
        if state is None or self._ring is None:
            return
        users, ts = state.columns["user_id"], state.columns["ts"]
        last = last_row_per_user(users, ts)
        self._ring = self._ring.merge(users[last], state.columns["user"][last], state.columns["fm_version"][last], ts[last])

    def _load(self, day: str) -> _Day:
        table = pq.read_table(self.directory / f"day={day}.parquet")
        columns: dict[str, np.ndarray] = {
            "user_id": table.column("user_id").to_numpy(),
            "ts": table.column("ts").to_numpy(),
            "fm_version": table.column("fm_version").to_numpy().astype(np.int64),
        }
        for task in self.tasks:
            columns[f"logit_{task}"] = table.column(f"logit_{task}").to_numpy().astype(np.float32)
        for name in ("user", "tae"):
            if name in self.dims:
                columns[name] = _fixed_list(table.column(name), np.float32)
        event_ids = table.column("event_id").to_numpy()
        order = np.argsort(event_ids, kind="stable")
        previous = self._previous_writes(columns["user_id"], columns["ts"]) if self._ring is not None else None
        loop = None
        if self._loop is not None:
            codes = _fixed_list(table.column("loopfm"), np.int8)
            rows = np.arange(self._code_count, self._code_count + len(codes), dtype=np.int64)
            self._append_codes(codes)
            entries = pa.table({"user_id": columns["user_id"], "ts": columns["ts"], "row": rows, "entry": np.ones(len(rows), np.int8)})
            history = self._loop.attach(entries)[1]
            loop = (history["row"][0], history["row"][1], history[HISTORY_TS][1])
        return _Day(day, event_ids[order], order, columns, previous, self._ring, loop)

    @staticmethod
    def _previous_writes(users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Per row, the row of the same user's latest event with a strictly smaller ts (-1 if none)."""
        order = np.lexsort((ts, users))
        u, t = users[order], ts[order]
        # First position of each row's (user, ts) group in sorted order; the entry just before it is
        # the latest strictly earlier write when it belongs to the same user.
        group_start = np.r_[True, (u[1:] != u[:-1]) | (t[1:] != t[:-1])]
        first = np.maximum.accumulate(np.where(group_start, np.arange(len(u)), 0))
        before = first - 1
        same_user = (before >= 0) & (u[np.maximum(before, 0)] == u)
        previous_sorted = np.where(same_user, order[np.maximum(before, 0)], -1)
        previous = np.empty_like(previous_sorted)
        previous[order] = previous_sorted
        return previous

    def _append_codes(self, codes: np.ndarray) -> None:
        needed = self._code_count + len(codes)
        if needed > len(self._codes):
            grown = np.zeros((max(needed, 2 * len(self._codes)), codes.shape[1]), np.int8)
            grown[: self._code_count] = self._codes[: self._code_count]
            self._codes = grown
        self._codes[self._code_count : needed] = codes
        self._code_count = needed
