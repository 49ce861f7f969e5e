"""Candidate rows for background FM work (refresh, precompute), built from the catalog alone.

The request path builds its rows from a validated request (`validation.py`); the refresh worker has
no request to validate, only (user, item) pairs and the context their request carried. Unknown users
or items get missing (null) features, which the models embed as their "missing" row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from fxrec.data.batches import Batch, EventFrame
from fxrec.data.schema import DatasetSpec, FeatureKind
from fxrec.serving.catalog import FeatureCatalog, FeatureRole, UserHistory, history_columns

_ARROW = {
    FeatureKind.sparse: pa.int64(),
    FeatureKind.multi: pa.list_(pa.int64()),
    FeatureKind.dense: pa.float32(),
}


def catalog_rows(
    catalog: FeatureCatalog,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    surfaces: list[str],
    contexts: list[dict[str, object]],
    ts: int,
) -> pa.Table:
    """One row per (user_ids[i], item_ids[i]) on surfaces[i] with contexts[i]; every non-sequence column."""
    n = len(user_ids)
    spec = catalog.spec
    user_rows = np.array(
        [catalog.user_row(int(u)) if catalog.has_user(int(u)) else -1 for u in user_ids], dtype=np.int64
    )
    item_rows = catalog.item_rows(item_ids.astype(np.int64))
    columns: dict[str, pa.Array] = {
        "event_id": pa.array(np.arange(n, dtype=np.int64)),
        "ts": pa.array(np.full(n, ts, dtype=np.int64)),
        "user_id": pa.array(user_ids.astype(np.int64)),
        "item_id": pa.array(item_ids.astype(np.int64)),
        "surface": pa.array(surfaces, pa.string()),
    }
    for task in spec.tasks:
        columns[task] = pa.array(np.zeros(n, dtype=np.float32))
    for feature in spec.features:
        name = feature.name
        if feature.kind is FeatureKind.sequence or name in ("user_id", "item_id"):
            continue
        role, arrow_type = catalog.roles[name], _ARROW[feature.kind]
        if role is FeatureRole.user:
            columns[name] = _take(catalog.users.column(name), user_rows, arrow_type)
        elif role is FeatureRole.item:
            columns[name] = _take(catalog.items.column(name), item_rows, arrow_type)
        elif role is FeatureRole.surface:
            columns[name] = pa.array(
                [catalog.surface_values.get(s, {}).get(name) for s in surfaces], arrow_type
            )
        else:
            columns[name] = pa.array([c.get(name) for c in contexts], arrow_type)
    return pa.table(columns)


def _take(column: pa.ChunkedArray, rows: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    taken = column.take(pa.array(np.maximum(rows, 0))).combine_chunks()
    if (rows < 0).any():
        taken = pa.array(
            [v if r >= 0 else None for v, r in zip(taken.to_pylist(), rows, strict=True)], arrow_type
        )
    return taken.cast(arrow_type) if taken.type != arrow_type else taken


def model_batch(
    spec: DatasetSpec, table: pa.Table, features: list[str], histories: list[UserHistory | None] | None = None
) -> Batch:
    """The Batch a model with `features` reads for `table`'s rows; `histories` has one entry per row."""
    specs = [spec.feature(f) for f in features]
    history = None
    if any(f.kind is FeatureKind.sequence for f in specs):
        history = history_columns(histories or [None] * table.num_rows, spec.sequence_sources())
    return EventFrame(table, spec, specs, history).batch(0, table.num_rows)


def histories_of(catalog: FeatureCatalog, user_ids: np.ndarray) -> list[UserHistory | None]:
    return [catalog.history_of(int(u)) for u in user_ids]


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor owning its memory (store reads and broadcasts are read-only views)."""
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
