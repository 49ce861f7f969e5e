"""One ad request through the funnel's three stages, and what each stage kept of the request's value.

    eligible ads --retrieval--> retrieval_k --ESR top-K--> esr_k --final-stage VM--> final_k winners

`run_request` is the one place a request's stages are chained: `fxrec funnel` (offline, over the
candidate log) and `POST /v1/funnel` (the HTTP service) both call it, so the service returns the
same winners as the offline pipeline for the same request. `FunnelTally` sums, over requests, what
`fxrec funnel` reports per stage:

- size: the mean number of ads the stage hands on;
- recall: of the ads the user clicked that day among the request's eligible ads, the share the stage
  still holds (mean over requests with at least one such click, as `recall_at_k`);
- soft recall (the ESR's): Σ of the final stage's value over the ESR's top `esr_k` of the retrieved ads
  ÷ Σ over the final stage's own top `esr_k` of them, per request, averaged (`fxrec.funnel.soft_recall`);
- value kept: Σ over requests of the final stage's value of the `final_k` best ads it could still pick
  from the stage's set ÷ the same with every eligible ad scored by the final stage. Values below zero
  count as zero (an ad worth less than nothing is not shown), so a stage never keeps more than
  everything: value kept ≤ 1, and the final stage's own is the end-to-end value;
- with the candidate log's oracle columns, the true value (bid x P(click) x P(conversion) - penalty x
  P(hide), the simulator's probabilities) of the funnel's winners, and of the final stage's picks from
  every eligible ad, each ÷ the true value of the best `final_k` ads (the most any ranking could get).

Ties in a score keep the earlier ad of the list first (stable sort), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fxrec.funnel.retrievers import (
    AlureRetriever,
    CoEngagementRetriever,
    PopularityRetriever,
    Retriever,
    TwoTowerRetriever,
)

STAGES = ("retrieval", "esr", "final")


def top_by(items: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The `k` items of the highest scores, best first (ties: the earlier item first)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return np.asarray(items, np.int64)[order[:k]]


def retrieval_stage(listed: np.ndarray, eligible: np.ndarray, fill: np.ndarray, k: int) -> np.ndarray:
    """The first `k` eligible ads of the retriever's list (`listed`, -1 padded), filled up where shorter
    with eligible ads in `fill`'s order (the popularity list), then the other eligible ads by id."""
    eligible = np.unique(np.asarray(eligible, np.int64))
    ordered = np.concatenate([np.asarray(listed, np.int64), np.asarray(fill, np.int64), eligible])
    ordered = ordered[np.isin(ordered, eligible)]
    _, first = np.unique(ordered, return_index=True)
    return ordered[np.sort(first)][:k]


@dataclass
class Funnelled:
    """One request's stages: the ads each hands on, best first, and the scores that chose them."""

    retrieved: np.ndarray
    ranked: np.ndarray  # the ESR's top esr_k of `retrieved`
    winners: np.ndarray  # the final stage's top final_k of `ranked`
    esr_scores: np.ndarray  # of `retrieved`, in its order
    final_values: np.ndarray  # of `ranked`, in its order

    def stage(self, name: str) -> np.ndarray:
        return {"retrieval": self.retrieved, "esr": self.ranked, "final": self.winners}[name]

    def winner_values(self) -> np.ndarray:
        """The final stage's value of each winner, in the winners' order."""
        value = dict(zip(self.ranked.tolist(), self.final_values.tolist(), strict=True))
        return np.array([value[int(i)] for i in self.winners], np.float64)


def run_request(
    listed: np.ndarray,
    eligible: np.ndarray,
    fill: np.ndarray,
    esr_scores: Callable[[np.ndarray], np.ndarray],
    final_values: Callable[[np.ndarray], np.ndarray],
    retrieval_k: int,
    esr_k: int,
    final_k: int,
) -> Funnelled:
    """Retrieval (`listed` cut to eligible ads, `retrieval_k`) -> the ESR's top `esr_k` by
    `esr_scores(items)` -> the final stage's top `final_k` by `final_values(items)`."""
    retrieved = retrieval_stage(listed, eligible, fill, retrieval_k)
    scores = np.asarray(esr_scores(retrieved), np.float64) if len(retrieved) else np.zeros(0)
    ranked = top_by(retrieved, scores, esr_k)
    values = np.asarray(final_values(ranked), np.float64) if len(ranked) else np.zeros(0)
    winners = top_by(ranked, values, final_k)
    return Funnelled(retrieved, ranked, winners, scores, values)


def best_value(values: np.ndarray, k: int) -> float:
    """Σ of the `k` highest of `values`, each floored at zero."""
    if len(values) == 0:
        return 0.0
    return float(np.maximum(np.sort(np.asarray(values, np.float64))[::-1][:k], 0.0).sum())


@dataclass
class FunnelTally:
    """Sums over requests of what each stage kept (see module docstring); `result()` the averages."""

    final_k: int
    recall_ks: list[int]
    requests: int = 0
    sizes: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    kept: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    everything: float = 0.0
    recall_sum: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    recall_requests: int = 0
    curve_sum: dict[str, dict[int, float]] = field(default_factory=dict)
    oracle_kept: float = 0.0
    oracle_everything: float = 0.0
    oracle_best: float = 0.0
    oracle_requests: int = 0
    soft_recall_sum: float = 0.0  # the ESR's soft recall@esr_k over the retrieved ads, summed per request
    soft_recall_requests: int = 0

    def add(
        self,
        funnelled: Funnelled,
        eligible: np.ndarray,
        all_values: np.ndarray,
        clicked: np.ndarray,
        curves: dict[str, np.ndarray] | None = None,
        oracle_values: np.ndarray | None = None,
    ) -> None:
        """One request: `all_values` is the final stage's value of every `eligible` ad, `clicked` the
        ads the user clicked that day, `curves` ranked lists whose recall@K the plot draws,
        `oracle_values` the true value of every eligible ad (when the log has it)."""
        eligible = np.asarray(eligible, np.int64)
        position = {int(item): i for i, item in enumerate(eligible)}
        self.requests += 1
        self.everything += best_value(all_values, self.final_k)
        for name in STAGES:
            items = funnelled.stage(name)
            self.sizes[name] += len(items)
            at = np.array([position[int(i)] for i in items], np.int64)
            self.kept[name] += best_value(all_values[at] if len(at) else np.zeros(0), self.final_k)
        targets = np.intersect1d(np.asarray(clicked, np.int64), eligible)
        if len(targets):
            self.recall_requests += 1
            for name in STAGES:
                self.recall_sum[name] += np.isin(targets, funnelled.stage(name)).sum() / len(targets)
            for name, ranked in (curves or {}).items():
                sums = self.curve_sum.setdefault(name, dict.fromkeys(self.recall_ks, 0.0))
                for k in self.recall_ks:
                    sums[k] += np.isin(targets, ranked[:k]).sum() / len(targets)
        if oracle_values is not None:
            picked = np.array([position[int(i)] for i in funnelled.winners], np.int64)
            everything = top_by(np.arange(len(eligible)), all_values, self.final_k)
            self.oracle_requests += 1
            self.oracle_kept += float(np.maximum(oracle_values[picked], 0).sum()) if len(picked) else 0.0
            self.oracle_everything += float(np.maximum(oracle_values[everything], 0).sum())
            self.oracle_best += best_value(oracle_values, self.final_k)

    def add_soft_recall(self, per_request: np.ndarray) -> None:
        """Requests' soft recall of the ESR (`fxrec.funnel.soft_recall`; NaN: no value to keep)."""
        known = np.asarray(per_request, np.float64)
        known = known[np.isfinite(known)]
        self.soft_recall_sum += float(known.sum())
        self.soft_recall_requests += len(known)

    def absorb(self, other: FunnelTally) -> None:
        """Add another tally's sums (another day's requests) to this one's."""
        self.requests += other.requests
        self.everything += other.everything
        self.recall_requests += other.recall_requests
        for name in STAGES:
            self.sizes[name] += other.sizes[name]
            self.kept[name] += other.kept[name]
            self.recall_sum[name] += other.recall_sum[name]
        for name, sums in other.curve_sum.items():
            mine = self.curve_sum.setdefault(name, dict.fromkeys(self.recall_ks, 0.0))
            for k, s in sums.items():
                mine[k] += s
        self.oracle_kept += other.oracle_kept
        self.oracle_everything += other.oracle_everything
        self.oracle_best += other.oracle_best
        self.oracle_requests += other.oracle_requests
        self.soft_recall_sum += other.soft_recall_sum
        self.soft_recall_requests += other.soft_recall_requests

    def result(self) -> dict:
        n, clicked = max(self.requests, 1), max(self.recall_requests, 1)
        stages = {
            name: {
                "mean_size": self.sizes[name] / n,
                "recall_of_clicked": self.recall_sum[name] / clicked if self.recall_requests else None,
                "value_kept": self.kept[name] / self.everything if self.everything > 0 else None,
                "value": self.kept[name],
            }
            for name in STAGES
        }
        out = {
            "requests": self.requests,
            "requests_with_clicks": self.recall_requests,
            "stages": stages,
            "value_everything": self.everything,
            "end_to_end_value_kept": stages["final"]["value_kept"],
            "recall_at_k": {
                name: {str(k): s / clicked for k, s in sums.items()} for name, sums in self.curve_sum.items()
            },
        }
        stages["esr"]["soft_recall"] = (
            self.soft_recall_sum / self.soft_recall_requests if self.soft_recall_requests else None
        )
        if self.oracle_requests and self.oracle_best > 0:
            out["oracle_value_kept"] = self.oracle_kept / self.oracle_best
            out["oracle_value_kept_scoring_everything"] = self.oracle_everything / self.oracle_best
        return out


def configured_retriever(funnel, publish_dir, spec) -> Retriever:
    """The retriever a run's `funnel:` block names (`fxrec.config.FunnelConfig`): ALURE over the FM user
    embeddings published in `publish_dir`, or a baseline; `spec` (the log's DatasetSpec) sizes the
    two-tower model's id tables."""
    if funnel.retriever == "alure":
        return AlureRetriever(publish_dir, neighbours=funnel.neighbours, search=funnel.search)
    if funnel.retriever == "popularity":
        return PopularityRetriever()
    if funnel.retriever == "item_to_item":
        return CoEngagementRetriever()
    return TwoTowerRetriever(
        spec.feature("user_id").cardinality, spec.feature("item_id").cardinality, seed=funnel.seed
    )
