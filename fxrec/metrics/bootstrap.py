"""Paired, user-clustered bootstrap of an AUC difference between two models on the same test rows.

Two models scored on one test split share its sampling noise: a test period that happens to favour
popular items lifts both. Comparing their mean AUCs with the seeds' spread ignores that noise, and
comparing two independent intervals overstates it. The paired bootstrap resamples the test rows
once per draw and scores both models on the same draw, so the interval is for the *difference*.

Rows of one user are not independent (a MovieLens user rates dozens of films in one sitting), so
the unit of resampling is the user: each draw picks users with replacement and a row counts as
often as its user was picked. With several seeds per model, each draw compares the seed-mean AUCs.

Example::

    diff = auc_difference(labels, [probs_a_seed0, probs_a_seed1], [probs_b_seed0], users)
    diff["low"], diff["high"]  # 95% interval of mean AUC(a) - mean AUC(b)
"""

from __future__ import annotations

import numpy as np

from fxrec.metrics.ranking import tie_groups


class _SortedScores:
    """One model's scores sorted once, so each draw's weighted AUC costs two bincounts."""

    def __init__(self, labels: np.ndarray, probs: np.ndarray):
        self.order, self.group = tie_groups(np.asarray(probs, dtype=np.float64))
        self.groups = int(self.group[-1]) + 1
        self.positive = (np.asarray(labels) > 0.5)[self.order]

    def auc(self, weights: np.ndarray) -> float:
        """AUC with row weights: weighted pairs (positive above negative), ties count one half."""
        w = weights[self.order]
        pos = np.bincount(self.group, w * self.positive, self.groups)
        neg = np.bincount(self.group, w * ~self.positive, self.groups)
        neg_below = np.cumsum(neg) - neg
        total = pos.sum() * neg.sum()
        return float((pos * (neg_below + 0.5 * neg)).sum() / total) if total > 0 else float("nan")


def auc_difference(
    labels: np.ndarray,
    probs_a: list[np.ndarray],
    probs_b: list[np.ndarray],
    clusters: np.ndarray,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Mean AUC of model a's seeds minus model b's, with a paired bootstrap over clusters (users).

    Returns `difference` (on the test rows as they are), `low` / `high` (the `level` percentile
    interval of the resampled differences), `p_a_ahead` (the share of draws where a's mean AUC is
    higher) and `clusters`.
    """
    labels = np.asarray(labels)
    if not probs_a or not probs_b:
        raise ValueError("need at least one prediction array per model")
    for probs in [*probs_a, *probs_b]:
        if len(probs) != len(labels):
            raise ValueError(f"predictions have {len(probs)} rows; the labels have {len(labels)}")
    if len(clusters) != len(labels):
        raise ValueError(f"clusters have {len(clusters)} rows; the labels have {len(labels)}")
    _, cluster = np.unique(np.asarray(clusters), return_inverse=True)
    n = int(cluster.max()) + 1
    a = [_SortedScores(labels, p) for p in probs_a]
    b = [_SortedScores(labels, p) for p in probs_b]

    def difference(weights: np.ndarray) -> float:
        return float(np.mean([m.auc(weights) for m in a]) - np.mean([m.auc(weights) for m in b]))

    observed = difference(np.ones(len(labels)))
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        picked = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)
        draws[i] = difference(picked[cluster])
    draws = draws[~np.isnan(draws)]
    tail = (1.0 - level) / 2
    return {
        "difference": observed,
        "low": float(np.quantile(draws, tail)),
        "high": float(np.quantile(draws, 1 - tail)),
        "p_a_ahead": float((draws > 0).mean()),
        "clusters": n,
    }
