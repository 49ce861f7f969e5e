"""Cohorts: slices of events along interpretable axes, and how differently a model scores them.

An axis names how events are split; each of its cohorts is a rule over raw columns of the log:

- a categorical column (`surface`, `age_bucket`, `gender`, any column named in config): one cohort
  per value;
- `<column>:<q>`: a numeric column cut at its quantiles into q ranges (`user_past_impressions:4`,
  the user's activity level);
- `advertiser_size` / `user_activity` (optionally `:<q>`, 3 by default): ids by how many events they
  have, cut into q groups of about equal events (small, medium, large advertisers).

A cohort's `mask(columns)` says which events belong to it. Quantile edges and id groups are fixed when
the axis is split (on the data the split looked at), so a cohort found once selects events anywhere.

`js_divergence` is the Jensen–Shannon divergence (natural log, at most ln 2) between two histograms;
`prediction_histogram` bins a cohort's predicted probabilities on shared edges (quantiles of every
prediction, so each bin holds an equal share of all events). C2AL (fxrec.objectives.c2al) picks the
pair of cohorts whose prediction distributions diverge most.

Example::

    cohorts = split_axis("surface", {"surface": surfaces})
    cohorts[0].name, cohorts[0].mask({"surface": surfaces})   # "feed", (N,) bool
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

COUNT_AXES = {"advertiser_size": "advertiser_id", "user_activity": "user_id"}
SIZE_NAMES = {2: ("small", "large"), 3: ("small", "medium", "large")}


@dataclass(frozen=True)
class Cohort:
    """Events of one cohort: `column` in `values`, or in [low, high) (None: unbounded)."""

    axis: str
    column: str
    name: str
    values: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None

    def mask(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N,) bool: which events of `columns` ({column: (N,)}) belong to the cohort."""
        if self.column not in columns:
            raise KeyError(
                f"cohort {self.label} reads the column {self.column!r}, which is not among {sorted(columns)}"
            )
        column = np.asarray(columns[self.column])
        if self.values is not None:
            return np.isin(column, np.asarray(self.values, dtype=column.dtype))
        inside = np.ones(len(column), dtype=bool)
        if self.low is not None:
            inside &= column >= self.low
        if self.high is not None:
            inside &= column < self.high
        return inside

    @property
    def label(self) -> str:
        return f"{self.axis}={self.name}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"axis": self.axis, "column": self.column, "name": self.name}
        if self.values is not None:
            out["values"] = [v.item() if hasattr(v, "item") else v for v in self.values]
        if self.low is not None:
            out["low"] = float(self.low)
        if self.high is not None:
            out["high"] = float(self.high)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cohort:
        values = data.get("values")
        return cls(
            axis=str(data.get("axis", data["column"])),
            column=str(data["column"]),
            name=str(data.get("name", "")),
            values=tuple(values) if values is not None else None,
            low=data.get("low"),
            high=data.get("high"),
        )


def axis_columns(axis: str) -> str:
    """The raw column an axis reads (`advertiser_size` reads advertiser_id)."""
    name = axis.split(":")[0]
    return COUNT_AXES.get(name, name)


def _parse(axis: str) -> tuple[str, int | None]:
    name, _, buckets = axis.partition(":")
    if buckets and (not buckets.isdigit() or int(buckets) < 2):
        raise ValueError(f"cohort axis {axis!r}: after ':' comes a number of buckets >= 2")
    if name in COUNT_AXES:
        return name, int(buckets) if buckets else 3
    return name, int(buckets) if buckets else None


def split_axis(axis: str, columns: Mapping[str, np.ndarray], min_events: int = 1) -> list[Cohort]:
    """The cohorts of `axis` on these events, each with at least `min_events` of them."""
    name, buckets = _parse(axis)
    column_name = COUNT_AXES.get(name, name)
    if column_name not in columns:
        raise KeyError(
            f"cohort axis {axis!r} reads the column {column_name!r}, which is not among {sorted(columns)}"
        )
    column = np.asarray(columns[column_name])
    if name in COUNT_AXES:
        cohorts = _count_cohorts(axis, column_name, column, buckets)
    elif buckets is None:
        values = np.unique(column)
        cohorts = [
            Cohort(axis, column_name, str(v), values=(v.item() if hasattr(v, "item") else v,)) for v in values
        ]
    else:
        cohorts = _range_cohorts(axis, column_name, column.astype(np.float64), buckets)
    return [c for c in cohorts if int(c.mask(columns).sum()) >= min_events]


def _range_cohorts(axis: str, column_name: str, column: np.ndarray, buckets: int) -> list[Cohort]:
    edges = np.unique(np.quantile(column, np.linspace(0, 1, buckets + 1)[1:-1]))
    bounds = [None, *edges.tolist(), None]
    cohorts = []
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        text = f"[{'-inf' if low is None else f'{low:.4g}'}, {'inf' if high is None else f'{high:.4g}'})"
        cohorts.append(Cohort(axis, column_name, text, low=low, high=high))
    return cohorts


def _count_cohorts(axis: str, column_name: str, column: np.ndarray, buckets: int) -> list[Cohort]:
    """Ids by their number of events, cut into `buckets` groups of about equal events (fewest first)."""
    ids, counts = np.unique(column, return_counts=True)
    order = np.argsort(counts, kind="stable")
    share = np.cumsum(counts[order]) / counts.sum()
    group = np.minimum((share * buckets - 1e-12).astype(int), buckets - 1)  # by the share up to each id
    names = SIZE_NAMES.get(buckets, tuple(f"q{i + 1}" for i in range(buckets)))
    cohorts = []
    for g in range(buckets):
        members = ids[order][group == g]
        if len(members):
            cohorts.append(
                Cohort(axis, column_name, names[g], values=tuple(m.item() for m in np.sort(members)))
            )
    return cohorts


def prediction_edges(probs: np.ndarray, bins: int = 20) -> np.ndarray:
    """Inner bin edges shared by every cohort: the quantiles of all predictions (equal-mass bins)."""
    return np.unique(np.quantile(np.asarray(probs, dtype=np.float64), np.linspace(0, 1, bins + 1)[1:-1]))


def prediction_histogram(probs: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of `probs` in each bin of the inner `edges` (len(edges) + 1 bins, summing to 1)."""
    index = np.searchsorted(np.asarray(edges), np.asarray(probs, dtype=np.float64), side="right")
    counts = np.bincount(index, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence ½ KL(p‖m) + ½ KL(q‖m), m = (p + q) / 2, natural log (0 ≤ JS ≤ ln 2)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        inside = a > 0
        return float(np.sum(a[inside] * np.log(a[inside] / m[inside])))

    return 0.5 * kl(p) + 0.5 * kl(q)


@dataclass
class Divergences:
    """Every within-axis pair of cohorts with its JS divergence, most divergent first."""

    pairs: list[tuple[Cohort, Cohort, float]]
    sizes: dict[str, int] = field(default_factory=dict)  # cohort label -> events

    def most_divergent(self) -> tuple[Cohort, Cohort, float]:
        if not self.pairs:
            raise ValueError(
                "no pair of cohorts to compare: every axis has fewer than two cohorts of enough events"
            )
        return self.pairs[0]

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "a": a.label,
                "b": b.label,
                "js": js,
                "a_events": self.sizes[a.label],
                "b_events": self.sizes[b.label],
            }
            for a, b, js in self.pairs
        ]


def cohort_divergences(
    probs: np.ndarray,
    columns: Mapping[str, np.ndarray],
    axes: list[str],
    bins: int = 20,
    min_share: float = 0.01,
) -> Divergences:
    """Pairwise JS divergences of the prediction distributions of every two cohorts of one axis.

    `probs` (N,) a baseline model's predictions, `columns` the raw columns the axes read, `min_share`:
    a cohort with fewer events than this share of all is left out (its histogram is noise).
    """
    probs = np.asarray(probs, dtype=np.float64)
    edges = prediction_edges(probs, bins)
    min_events = max(1, int(np.ceil(min_share * len(probs))))
    pairs, sizes = [], {}
    for axis in axes:
        cohorts = split_axis(axis, columns, min_events)
        histograms = []
        for cohort in cohorts:
            mask = cohort.mask(columns)
            sizes[cohort.label] = int(mask.sum())
            histograms.append(prediction_histogram(probs[mask], edges))
        for i in range(len(cohorts)):
            for j in range(i + 1, len(cohorts)):
                pairs.append((cohorts[i], cohorts[j], js_divergence(histograms[i], histograms[j])))
    pairs.sort(key=lambda pair: -pair[2])
    return Divergences(pairs, sizes)
