"""NE, AUC, GAUC and calibration over numpy arrays of labels and predicted probabilities.

- NE = mean log loss / entropy of the mean label (lower is better; 1.0 = predicting the base rate).
- AUC: probability a random positive outranks a random negative; ties count one half.
- GAUC: per-user AUC, averaged with weights = the user's number of events, over users that have
  both a positive and a negative.
- calibration = mean prediction / mean label (1.0 is calibrated).
"""

from __future__ import annotations

import numpy as np
import polars as pl

EPS = 1e-7


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ne(labels: np.ndarray, probs: np.ndarray) -> float:
    base = float(np.clip(np.mean(labels), EPS, 1 - EPS))
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    return log_loss(labels, probs) / entropy


def relative_ne_change(ne_new: float, ne_base: float) -> float:
    """NE change in percent relative to a baseline (negative = better), the unit ads teams use."""
    return 100.0 * (ne_new - ne_base) / ne_base


def tie_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, group): the ascending sort order of `scores` and, for each sorted position, the index
    of its run of equal scores (0, 1, ...), the unit AUC's half-credit for ties works on."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    change = np.ones(len(scores), dtype=bool)
    change[1:] = sorted_scores[1:] != sorted_scores[:-1]
    return order, np.cumsum(change) - 1


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    order, group = tie_groups(scores)
    # A run of equal scores at sorted positions [end - size, end) gets the mean of its 1-based ranks.
    sizes = np.bincount(group)
    mean_rank = np.cumsum(sizes) - (sizes - 1) / 2.0
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels) > 0.5
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(probs, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(labels: np.ndarray, probs: np.ndarray, users: np.ndarray) -> float:
    frame = pl.DataFrame(
        {
            "user": np.asarray(users),
            "y": (np.asarray(labels) > 0.5).astype(np.int64),
            "p": np.asarray(probs, dtype=np.float64),
        }
    )
    per_user = (
        frame.with_columns(rank=pl.col("p").rank("average").over("user"))
        .group_by("user", maintain_order=True)  # a fixed summation order: the same digits every run
        .agg(
            n=pl.len(),
            pos=pl.col("y").sum(),
            rank_pos=(pl.col("rank") * pl.col("y")).sum(),
        )
        .with_columns(neg=pl.col("n") - pl.col("pos"))
        .filter((pl.col("pos") > 0) & (pl.col("neg") > 0))
    )
    if per_user.height == 0:
        return float("nan")
    user_auc = (per_user["rank_pos"] - per_user["pos"] * (per_user["pos"] + 1) / 2) / (
        per_user["pos"] * per_user["neg"]
    )
    weights = per_user["n"].cast(pl.Float64)
    return float((user_auc * weights).sum() / weights.sum())


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
    mean_label = float(np.mean(labels))
    return float(np.mean(probs)) / mean_label if mean_label > 0 else float("nan")


def evaluate(labels: np.ndarray, probs: np.ndarray, users: np.ndarray | None = None) -> dict[str, float]:
    """All metrics for one task on one set of events."""
    result = {
        "ne": ne(labels, probs),
        "auc": auc(labels, probs),
        "log_loss": log_loss(labels, probs),
        "calibration": calibration(labels, probs),
        "n_eval": int(len(labels)),
    }
    result["gauc"] = gauc(labels, probs, users) if users is not None else float("nan")
    return result
