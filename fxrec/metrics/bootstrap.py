"""Paired, user-clustered bootstrap of an AUC (or NE and calibration) difference between two models on
the same test rows.

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


def _paired_clusters(
    labels: np.ndarray, probs_a: list[np.ndarray], probs_b: list[np.ndarray], clusters: np.ndarray
) -> tuple[np.ndarray, int]:
    """Checks that every prediction array and the clusters have a row per label; returns each row's
    cluster index (0..n-1) and n."""
    if not probs_a or not probs_b:
        raise ValueError("need at least one prediction array per model")
    for probs in [*probs_a, *probs_b]:
        if len(probs) != len(labels):
            raise ValueError(f"predictions have {len(probs)} rows; the labels have {len(labels)}")
    if len(clusters) != len(labels):
        raise ValueError(f"clusters have {len(clusters)} rows; the labels have {len(labels)}")
    _, cluster = np.unique(np.asarray(clusters), return_inverse=True)
    return cluster, int(cluster.max()) + 1


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
    cluster, n = _paired_clusters(labels, probs_a, probs_b, clusters)
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
    if len(draws) == 0:  # no draw with both labels (a handful of positives in a few clusters)
        return {
            "difference": observed,
            "low": float("nan"),
            "high": float("nan"),
            "p_a_ahead": float("nan"),
            "clusters": n,
        }
    return {
        "difference": observed,
        "low": float(np.quantile(draws, tail)),
        "high": float(np.quantile(draws, 1 - tail)),
        "p_a_ahead": float((draws > 0).mean()),
        "clusters": n,
    }


def _entropy(rate: np.ndarray) -> np.ndarray:
    rate = np.clip(rate, 1e-7, 1 - 1e-7)
    return -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))


def ne_difference(
    labels: np.ndarray,
    probs_a: list[np.ndarray],
    probs_b: list[np.ndarray],
    clusters: np.ndarray,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Relative NE change of model a's seed-mean NE against model b's, in percent (negative: a is
    better), and the calibration difference (mean prediction / mean label, a − b), with a paired
    bootstrap over clusters (users), as `auc_difference`.

    NE and calibration are ratios of sums, so each draw costs a dot product of per-cluster sums.
    Returns `ne_change_pct`, `ne_low` / `ne_high`, `calibration_difference`, `calibration_low` /
    `calibration_high`, `p_a_better` (share of draws where a's NE is lower) and `clusters`.
    """
    labels = np.asarray(labels, dtype=np.float64)
    cluster, n = _paired_clusters(labels, probs_a, probs_b, clusters)

    def sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(cluster, values, minlength=n)

    def per_model(probs_list: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        losses, means = [], []
        for probs in probs_list:
            p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
            losses.append(sums(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))))
            means.append(sums(p))
        return np.stack(losses), np.stack(means)  # (seeds, clusters) each

    loss_a, pred_a = per_model(probs_a)
    loss_b, pred_b = per_model(probs_b)
    positives, count = sums(labels), sums(np.ones_like(labels))

    def metrics(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(weights (D, n)) -> NE change % and calibration difference per draw (D,)."""
        events, rate = weights @ count, (weights @ positives) / np.maximum(weights @ count, 1e-12)
        entropy = _entropy(rate) * events
        ne_a = ((weights @ loss_a.T) / entropy[:, None]).mean(axis=1)
        ne_b = ((weights @ loss_b.T) / entropy[:, None]).mean(axis=1)
        positives_w = np.maximum(weights @ positives, 1e-12)
        calibration_a = ((weights @ pred_a.T) / positives_w[:, None]).mean(axis=1)
        calibration_b = ((weights @ pred_b.T) / positives_w[:, None]).mean(axis=1)
        return 100.0 * (ne_a - ne_b) / ne_b, calibration_a - calibration_b

    observed_ne, observed_calibration = metrics(np.ones((1, n)))
    rng = np.random.default_rng(seed)
    draws_ne, draws_calibration = [], []
    for start in range(0, resamples, 256):  # draws in blocks: (256, clusters) weights at a time
        size = min(256, resamples - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        ne_change, calibration_change = metrics(weights)
        draws_ne.append(ne_change)
        draws_calibration.append(calibration_change)
    ne_draws = np.concatenate(draws_ne)
    calibration_draws = np.concatenate(draws_calibration)
    keep = np.isfinite(ne_draws)
    tail = (1.0 - level) / 2
    return {
        "ne_change_pct": float(observed_ne[0]),
        "ne_low": float(np.quantile(ne_draws[keep], tail)),
        "ne_high": float(np.quantile(ne_draws[keep], 1 - tail)),
        "calibration_difference": float(observed_calibration[0]),
        "calibration_low": float(np.quantile(calibration_draws[keep], tail)),
        "calibration_high": float(np.quantile(calibration_draws[keep], 1 - tail)),
        "p_a_better": float((ne_draws[keep] < 0).mean()),
        "clusters": n,
    }
