"""What the server knows about users and items besides the request: a snapshot of the log.

A scoring request carries a user id, context and candidate item ids; the rest of a model's inputs
(the user's demographics, an ad's format, the user's recent clicks) live server-side, as they do
behind any ads ranker. `FeatureCatalog` builds that side from the event log once at start-up:

- each feature's *role*, inferred from the log rather than configured: `user` if it is constant per
  user, `item` if constant per item, `surface` if constant per surface, else `context` (the client
  sends it). Inferring keeps every importer (simulator, MovieLens, CSV) servable without new config.
- the latest value of every user-side and item-side feature per user / item;
- each user's last L positive events (the same leak-free histories the trainer builds), for models
  with sequence features;
- which context features each surface actually fills (stories has no `position`), so a request
  is only required to send what the log has.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import polars as pl
import pyarrow as pa

from fxrec.data.eventlog import EventLog
from fxrec.data.history import HISTORY_TS
from fxrec.data.schema import DatasetSpec, FeatureKind, FeatureSpec

# A key "varies" a feature when it has >1 distinct value; a role needs this to be rare among keys
# seen at least twice (a few per cent leaves room for ids re-used or attributes edited mid-log).
_MAX_VARYING = 0.02


class FeatureRole(StrEnum):
    user = "user"
    item = "item"
    surface = "surface"
    context = "context"
    history = "history"  # sequence features: derived from the user's past positives


@dataclass(frozen=True)
class UserHistory:
    """A user's last L positives, oldest first: `ts` (L,) and {source column: (L,) ids}."""

    ts: np.ndarray
    values: dict[str, np.ndarray]


def _varying_share(frame: pl.DataFrame, key: str, column: str, kind: FeatureKind) -> float:
    value = pl.col(column).hash() if kind is FeatureKind.multi else pl.col(column)
    counts = frame.group_by(key).agg(pl.len().alias("rows"), value.n_unique().alias("distinct"))
    counts = counts.filter(pl.col("rows") > 1)
    if counts.height == 0:
        return 0.0
    return float((counts["distinct"] > 1).mean())


def infer_roles(frame: pl.DataFrame, spec: DatasetSpec) -> dict[str, FeatureRole]:
    """Each feature's role from a sample of the log (see module docstring)."""
    roles: dict[str, FeatureRole] = {}
    for feature in spec.features:
        if feature.kind is FeatureKind.sequence:
            roles[feature.name] = FeatureRole.history
        elif feature.name == "user_id":
            roles[feature.name] = FeatureRole.user
        elif feature.name == "item_id":
            roles[feature.name] = FeatureRole.item
        elif feature.name not in frame.columns:
            roles[feature.name] = FeatureRole.context
        else:
            for key, role in (
                ("user_id", FeatureRole.user),
                ("item_id", FeatureRole.item),
                ("surface", FeatureRole.surface),
            ):
                if _varying_share(frame, key, feature.name, feature.kind) <= _MAX_VARYING:
                    roles[feature.name] = role
                    break
            else:
                roles[feature.name] = FeatureRole.context
    return roles


class FeatureCatalog:
    """Server-side features, looked up by user id and item id (see module docstring)."""

    def __init__(
        self,
        spec: DatasetSpec,
        roles: dict[str, FeatureRole],
        users: pa.Table,
        items: pa.Table,
        surface_values: dict[str, dict[str, object]],
        surface_context: dict[str, list[str]],
        histories: dict[int, UserHistory],
        last_ts: int,
    ):
        self.spec = spec
        self.roles = roles
        self.users = users  # user_id + user-side features, one row per user
        self.items = items  # item_id + item-side features, one row per item
        self.surface_values = surface_values  # surface -> {surface-side feature: value}
        self.surface_context = surface_context  # surface -> context features the log fills there
        self.histories = histories
        self.last_ts = last_ts
        self._user_row = {int(u): i for i, u in enumerate(users.column("user_id").to_numpy())}
        item_ids = items.column("item_id").to_numpy()
        self._item_order = np.argsort(item_ids, kind="stable")
        self._item_sorted = item_ids[self._item_order]

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_log(cls, log: EventLog, role_days: int = 1) -> FeatureCatalog:
        """Scan the log once: roles from its last `role_days` days, latest values and histories from all."""
        spec = log.spec
        plain = [f for f in spec.features if f.kind is not FeatureKind.sequence]
        columns = ["ts", "user_id", "item_id", "surface", spec.history_label, *spec.sequence_sources()]
        columns += [f.name for f in plain]
        columns = list(dict.fromkeys(columns))
        frame = pl.from_arrow(log.read_all(columns)).sort("ts", maintain_order=True)
        recent_days = set(log.days[-role_days:])
        day = pl.from_epoch("ts").dt.strftime("%Y-%m-%d")
        roles = infer_roles(frame.filter(day.is_in(list(recent_days))), spec)
        user_features = [f.name for f in plain if roles[f.name] is FeatureRole.user and f.name != "user_id"]
        item_features = [f.name for f in plain if roles[f.name] is FeatureRole.item and f.name != "item_id"]
        surface_features = [f.name for f in plain if roles[f.name] is FeatureRole.surface]
        context_features = [f.name for f in plain if roles[f.name] is FeatureRole.context]

        users = (
            frame.group_by("user_id", maintain_order=True).agg(pl.col(user_features).last())
            if user_features
            else frame.select("user_id").unique(maintain_order=True)
        )
        items = (
            frame.group_by("item_id", maintain_order=True).agg(pl.col(item_features).last())
            if item_features
            else frame.select("item_id").unique(maintain_order=True)
        )
        surface_values: dict[str, dict[str, object]] = {}
        surface_context: dict[str, list[str]] = {}
        for surface in spec.surfaces:
            rows = frame.filter(pl.col("surface") == surface)
            surface_values[surface] = {f: (rows[f][-1] if rows.height else None) for f in surface_features}
            surface_context[surface] = [
                f for f in context_features if rows.height and rows[f].null_count() < rows.height
            ]
        histories = _histories(frame, spec)
        return cls(
            spec,
            roles,
            users.to_arrow(),
            items.to_arrow(),
            surface_values,
            surface_context,
            histories,
            int(frame["ts"].max()),
        )

    # -- lookups --------------------------------------------------------------------------------
    def has_user(self, user_id: int) -> bool:
        return user_id in self._user_row

    def user_row(self, user_id: int) -> int:
        return self._user_row[user_id]

    def user_ids(self) -> np.ndarray:
        return self.users.column("user_id").to_numpy()

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item in `items`; -1 for items the catalog has never seen."""
        position = np.searchsorted(self._item_sorted, item_ids)
        position = np.minimum(position, len(self._item_sorted) - 1)
        found = (
            self._item_sorted[position] == item_ids
            if len(self._item_sorted)
            else np.zeros(len(item_ids), bool)
        )
        return np.where(found, self._item_order[position], -1)

    def features_with_role(self, role: FeatureRole, names: list[str] | None = None) -> list[str]:
        names = names if names is not None else [f.name for f in self.spec.features]
        return [n for n in names if self.roles[n] is role]

    def history_of(self, user_id: int) -> UserHistory | None:
        return self.histories.get(user_id)

    def feature(self, name: str) -> FeatureSpec:
        return self.spec.feature(name)


def _histories(frame: pl.DataFrame, spec: DatasetSpec) -> dict[int, UserHistory]:
    """Each user's last L positives over the whole log (what the next event would see)."""
    sources = spec.sequence_sources()
    if not sources:
        return {}
    positives = frame.filter(pl.col(spec.history_label) > 0).select("user_id", "ts", *sources)
    tails = positives.group_by("user_id", maintain_order=True).tail(spec.history_length)
    grouped = tails.group_by("user_id", maintain_order=True).agg(pl.col("ts"), *[pl.col(s) for s in sources])
    out: dict[int, UserHistory] = {}
    for row in grouped.iter_rows(named=True):
        out[int(row["user_id"])] = UserHistory(
            ts=np.asarray(row["ts"], dtype=np.int64),
            values={s: np.asarray(row[s], dtype=np.int64) for s in sources},
        )
    return out


def history_columns(
    histories: list[UserHistory | None], sources: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The EventFrame `history` argument for events whose users have these histories (one per row)."""
    lengths = np.array([0 if h is None else len(h.ts) for h in histories], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    present = [h for h in histories if h is not None]

    def flat(pick) -> np.ndarray:
        return (
            np.concatenate([pick(h) for h in present]).astype(np.int64) if present else np.zeros(0, np.int64)
        )

    out = {source: (offsets, flat(lambda h, s=source: h.values[s])) for source in sources}
    out[HISTORY_TS] = (offsets, flat(lambda h: h.ts))
    return out


def history_before(history: UserHistory | None, ts: int) -> UserHistory | None:
    """Only the entries strictly before `ts`: a request dated in the past must not see its future."""
    if history is None or (len(history.ts) and history.ts[-1] < ts):
        return history
    keep = history.ts < ts
    return UserHistory(history.ts[keep], {k: v[keep] for k, v in history.values.items()})
