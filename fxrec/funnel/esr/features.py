"""The early-stage ranker's inputs: plain tensors per tower, built from impression or candidate rows.

The user tower reads what is known when a request arrives: the user's features, their click histories
(leak-free, `fxrec.data.history`) and the request's context (surface, hour, position, what the user
watches); the ad tower reads the ad's own features. A candidate row (`fxrec.funnel.candidate_rows`)
and an impression row give the same tensors for the same (request, ad): the ESR trains on impressions
and ranks candidates with one code path.

Ids become table rows as everywhere in fxrec (`fxrec.data.batches.hash_rows`: row 0 is missing);
multi-valued features and histories are padded with row 0; dense features go through sign(x) log1p|x|
(ages in days and counts share one scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from fxrec.data.batches import _cardinality, _ids, _list_ids, hash_rows
from fxrec.data.schema import DatasetSpec, FeatureKind, FeatureSpec
from fxrec.funnel.esr.model import TowerInputs

USER_FEATURES = (
    "user_id",
    "country",
    "age_bucket",
    "device",
    "user_segments",
    "user_past_impressions",
    "hist_item_id",
    "hist_advertiser_id",
    "surface_id",
    "hour",
    "position",
    "watch_context",
)
AD_FEATURES = ("item_id", "advertiser_id", "ad_format", "ad_category", "ad_age_days")

History = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class EsrFeatures:
    """Which features each tower reads (those of `user` / `ad` the log's spec has)."""

    spec: DatasetSpec
    user: list[str] = field(default_factory=lambda: list(USER_FEATURES))
    ad: list[str] = field(default_factory=lambda: list(AD_FEATURES))

    def __post_init__(self) -> None:
        known = {f.name for f in self.spec.features}
        self.user = [f for f in self.user if f in known]
        self.ad = [f for f in self.ad if f in known]
        if not self.ad or not self.user:
            raise ValueError(
                f"EsrFeatures: no user or no ad features in the log's spec (features: {sorted(known)})"
            )

    def specs(self) -> list[FeatureSpec]:
        """The features to read from the log (`fxrec.data.reader.iter_tables`)."""
        return [self.spec.feature(name) for name in [*self.user, *self.ad]]

    def _ids(self, names: list[str]) -> list[FeatureSpec]:
        return [self.spec.feature(n) for n in names if self.spec.feature(n).kind is not FeatureKind.dense]

    def _dense(self, names: list[str]) -> list[str]:
        return [n for n in names if self.spec.feature(n).kind is FeatureKind.dense]

    def model_arguments(self) -> dict:
        """EarlyStageRanker's tables, user, ad, user_dense and ad_dense for these features."""
        ids = self._ids(self.user) + self._ids(self.ad)
        tables = {f.table_name: _cardinality(self.spec, f) for f in ids}
        return {
            "tables": tables,
            "user": {f.name: f.table_name for f in self._ids(self.user)},
            "ad": {f.name: f.table_name for f in self._ids(self.ad)},
            "user_dense": len(self._dense(self.user)),
            "ad_dense": len(self._dense(self.ad)),
        }

    def user_inputs(self, table: pa.Table, history: History | None) -> TowerInputs:
        return self._inputs(self.user, table, history)

    def ad_inputs(self, table: pa.Table) -> TowerInputs:
        return self._inputs(self.ad, table, None)

    def _inputs(self, names: list[str], table: pa.Table, history: History | None) -> TowerInputs:
        n = table.num_rows
        ids: dict[str, torch.Tensor] = {}
        for feature in self._ids(names):
            cardinality = _cardinality(self.spec, feature)
            if feature.kind is FeatureKind.sparse:
                values, valid = _ids(table.column(feature.name))
                ids[feature.name] = torch.from_numpy(hash_rows(values, cardinality, valid)).unsqueeze(1)
            elif feature.kind is FeatureKind.multi:
                offsets, values = _list_ids(table.column(feature.name))
                ids[feature.name] = _padded(offsets, hash_rows(values, cardinality), n)
            else:  # a history: the user's clicks before the event (HistoryTracker)
                if history is None or feature.source not in history:
                    raise ValueError(f"EsrFeatures: history {feature.name!r} needs the rows' histories")
                offsets, values = history[feature.source]
                ids[feature.name] = _padded(offsets, hash_rows(values, cardinality), n)
        dense_names = self._dense(names)
        if dense_names:
            matrix = np.stack(
                [
                    table.column(d).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32)
                    for d in dense_names
                ],
                1,
            )
            dense = torch.from_numpy(np.sign(matrix) * np.log1p(np.abs(matrix)))
        else:
            dense = torch.zeros(n, 0)
        return TowerInputs(ids, dense)


def _padded(offsets: np.ndarray, rows: np.ndarray, n: int) -> torch.Tensor:
    """(n, longest) rows of a jagged column, padded with 0 (at least one column)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    width = max(int(lengths.max(initial=0)), 1)
    out = np.zeros((n, width), dtype=np.int64)
    if len(rows):
        row = np.repeat(np.arange(n), lengths)
        column = np.arange(len(rows)) - np.repeat(offsets[:-1], lengths)
        out[row, column] = rows[: offsets[-1]]
    return torch.from_numpy(out)
