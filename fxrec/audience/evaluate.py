"""A bound targeting query evaluated over users in columnar form (numpy).

`mask(node, columns)` is the query's truth per user for a surface-free node (fxrec.audience.query
turns surface terms into per-surface nodes with `Active` leaves). `reach(query, columns)` gives, per
user, whether the query reaches them and how many of their impressions it reaches; summing those
over a population is the exact answer that the reach estimators approximate.
"""

from __future__ import annotations

import numpy as np

from fxrec.audience.query import (
    Active,
    And,
    Categorical,
    Const,
    Node,
    Not,
    Numeric,
    Or,
    Query,
    Segment,
    Surface,
)
from fxrec.audience.schema import Columns, has_bit


def mask(node: Node, columns: Columns, cache: dict | None = None) -> np.ndarray:
    """Boolean per user; `cache` (leaf -> mask) shares leaf masks between calls on the same columns."""
    cache = {} if cache is None else cache
    if isinstance(node, And | Or):
        result = mask(node.items[0], columns, cache).copy()
        combine = np.logical_and if isinstance(node, And) else np.logical_or
        for item in node.items[1:]:
            combine(result, mask(item, columns, cache), out=result)
        return result
    if isinstance(node, Not):
        return ~mask(node.item, columns, cache)
    if isinstance(node, Const):
        return np.full(len(columns), node.value)
    if node not in cache:
        cache[node] = _leaf(node, columns)
    return cache[node]


def _leaf(node: Node, columns: Columns) -> np.ndarray:
    if isinstance(node, Categorical):
        values = columns.categorical[node.field]
        if len(node.codes) == 1:
            return values == next(iter(node.codes))
        return np.isin(values, np.fromiter(node.codes, dtype=values.dtype))
    if isinstance(node, Numeric):
        values = columns.numeric[node.field]
        return (values >= max(node.low, -(2**15))) & (values <= min(node.high, 2**15 - 1))
    if isinstance(node, Segment):
        return has_bit(columns.segments[node.namespace], node.index)
    if isinstance(node, Active):
        return columns.impressions[:, node.surface] > 0
    if isinstance(node, Surface):
        raise ValueError(
            "a surface term is decided per surface (Query.per_surface / Query.users) before evaluation"
        )
    raise TypeError(f"not a query node: {node!r}")


def reach(query: Query, columns: Columns, cache: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(reached: bool per user, reached impressions: int64 per user); `cache` shares leaf masks between
    queries over the same columns."""
    cache = {} if cache is None else cache
    surfaces = columns.impressions.shape[1]
    if not query.uses_surface:
        reached = mask(query.node, columns, cache)
        return reached, np.where(reached, columns.total_impressions, 0)
    impressions = np.zeros(len(columns), dtype=np.int64)
    for s, node in enumerate(query.per_surface(surfaces)):
        impressions += np.where(mask(node, columns, cache), columns.impressions[:, s], 0)
    return mask(query.users(surfaces), columns, cache), impressions
