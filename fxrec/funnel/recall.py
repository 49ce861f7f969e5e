"""recall@K: the share of the items a user actually clicked that the retrieval's top K holds.

For users u with a non-empty clicked set R_u: recall@K = mean over u of |top_K(u) ∩ R_u| / |R_u|,
where top_K(u) is the first K entries of u's retrieved list (its -1 padding holds nothing).
"""

from __future__ import annotations

import numpy as np


def recall_at_k(
    retrieved: np.ndarray, users: np.ndarray, clicked_user: np.ndarray, clicked_item: np.ndarray, k: int
) -> float:
    """Mean recall@k over `users` (one row of `retrieved` each, (n, >= k) item ids, -1 padded) of
    the (clicked_user, clicked_item) pairs; users without clicks do not count."""
    pairs = np.unique(np.stack([clicked_user, clicked_item], axis=1), axis=0)
    row_of = {int(u): i for i, u in enumerate(users)}
    top = retrieved[:, :k]
    hits, totals = np.zeros(len(users)), np.zeros(len(users))
    row = np.array([row_of.get(int(u), -1) for u in pairs[:, 0]], dtype=np.int64)
    known = row >= 0
    np.add.at(totals, row[known], 1)
    found = (top[row[known]] == pairs[known, 1][:, None]).any(axis=1)
    np.add.at(hits, row[known], found)
    counted = totals > 0
    return float((hits[counted] / totals[counted]).mean()) if counted.any() else float("nan")
