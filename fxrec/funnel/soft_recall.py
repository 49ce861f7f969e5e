"""Soft recall@K: how much of the final stage's value an early-stage ranker (ESR) keeps.

For one request r with candidates c and the final stage's value v_c (`fxrec.funnel.value`):

    soft_recall@K(r) = sum of v_c over the ESR's top K  /  sum of v_c over the final stage's own top K

and `soft_recall_at_k` averages it over requests. A perfect ESR scores 1; an ESR that hands the final
stage the wrong K candidates scores the share of the attainable value it still hands over.

- Ties: the final stage's top-K sum does not depend on how ties are broken. Where the ESR ties at its
  K-th place, the tied candidates share the remaining slots: they count with their mean value (the
  expectation over every order of the tie), so a constant ESR scores the mean value per slot, not
  whatever the candidates' order in the log happens to favour.
- Fewer than K candidates: both stages keep all of them, the ratio is 1.
- Negative values (an annoying ad worth less than its hide penalty) count as they are in both sums: an
  ESR that passes such an ad on loses value. A request whose final-stage top-K sum is <= 0 has no
  value to keep; it is left out of the mean (`soft_recall_per_request` gives it NaN).
"""

from __future__ import annotations

import numpy as np


def soft_recall_per_request(
    esr_scores: np.ndarray, final_values: np.ndarray, groups: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(requests, soft recall@k of each): `groups` holds each candidate's request (e.g. its `event_id`),
    rows in any order; a request whose final-stage top-k value is <= 0 gets NaN."""
    if k < 1:
        raise ValueError(f"soft recall@K needs K >= 1, got {k}")
    scores = np.asarray(esr_scores, dtype=np.float64)
    values = np.asarray(final_values, dtype=np.float64)
    groups = np.asarray(groups)
    if not (scores.shape == values.shape == groups.shape) or scores.ndim != 1:
        raise ValueError(
            f"esr_scores, final_values and groups must be 1-d of one length; got {scores.shape}, "
            f"{values.shape}, {groups.shape}"
        )
    if np.isnan(scores).any() or np.isnan(values).any():
        raise ValueError("soft recall: esr_scores and final_values must not hold NaN")
    requests, group = np.unique(groups, return_inverse=True)
    n = len(requests)
    kept = _top_k_sum(scores, values, group, n, k)
    best = _top_k_sum(values, values, group, n, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(best > 0, kept / np.where(best > 0, best, 1.0), np.nan)
    return requests, ratio


def soft_recall_at_k(esr_scores: np.ndarray, final_values: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Mean soft recall@k over the requests with a positive final-stage top-k value (NaN if none)."""
    _, ratio = soft_recall_per_request(esr_scores, final_values, groups, k)
    return float(np.nanmean(ratio)) if np.isfinite(ratio).any() else float("nan")


def _top_k_sum(scores: np.ndarray, values: np.ndarray, group: np.ndarray, n: int, k: int) -> np.ndarray:
    """Per group: the sum of `values` over the k highest `scores`, ties at the k-th place sharing the
    slots left by their mean value."""
    order = np.lexsort((-scores, group))  # by group, then score descending
    sorted_group = group[order]
    starts = np.searchsorted(sorted_group, np.arange(n))
    sizes = np.bincount(group, minlength=n)
    # The k-th highest score of each group (its lowest score when it has fewer than k candidates).
    kth = order[starts + np.minimum(sizes, k) - 1]
    threshold = scores[kth][group]
    above = scores > threshold
    tied = scores == threshold
    sum_above = np.bincount(group, weights=values * above, minlength=n)
    n_above = np.bincount(group, weights=above.astype(np.float64), minlength=n)
    sum_tied = np.bincount(group, weights=values * tied, minlength=n)
    n_tied = np.bincount(group, weights=tied.astype(np.float64), minlength=n)
    slots = np.minimum(sizes, k) - n_above
    return sum_above + slots * sum_tied / np.maximum(n_tied, 1.0)
