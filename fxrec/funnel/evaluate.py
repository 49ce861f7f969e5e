"""Every retriever over later days, side by side: recall@K of the ads users actually clicked.

For each evaluation day t: the clicks before t go to each retriever's `prepare`; the users who click
on day t are asked for; their lists (filled up with the popularity list where shorter than K, the
same for every retriever) are scored by recall@K against the ads they clicked on day t.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from fxrec.funnel.engagements import Engagements
from fxrec.funnel.lists import merge
from fxrec.funnel.recall import recall_at_k
from fxrec.funnel.retrievers import PopularityRetriever, Retriever

KS = (50, 200, 1000)


@dataclass
class RetrievalResult:
    """recall[name][k] averaged over days; per_day[name][k] one value per day; seconds[name] spent."""

    days: list[str]
    ks: tuple[int, ...]
    recall: dict[str, dict[int, float]] = field(default_factory=dict)
    per_day: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    own_length: dict[str, float] = field(default_factory=dict)  # mean list length before the fill-up

    def as_dict(self) -> dict:
        return {
            "days": self.days,
            "ks": list(self.ks),
            "recall": {n: {str(k): v for k, v in r.items()} for n, r in self.recall.items()},
            "per_day": {n: {str(k): v for k, v in r.items()} for n, r in self.per_day.items()},
            "seconds": self.seconds,
            "list_length_before_fill": self.own_length,
        }


def evaluate_retrieval(
    engagements: Engagements,
    days: list[str],
    retrievers: list[Retriever],
    ks: tuple[int, ...] = KS,
    fill: bool = True,
) -> RetrievalResult:
    """recall@K of every retriever on each of `days`, each day seeing only the clicks before it."""
    result = RetrievalResult(list(days), tuple(ks))
    top = max(ks)
    filler = PopularityRetriever()
    for day in days:
        history, target = engagements.before(day), engagements.on(day)
        users = np.unique(target.user)
        filler.prepare(day, history)
        for retriever in retrievers:
            started = time.perf_counter()
            retriever.prepare(day, history)
            lists = retriever.retrieve(users, top)
            result.seconds[retriever.name] = (
                result.seconds.get(retriever.name, 0.0) + time.perf_counter() - started
            )
            lengths = result.own_length.setdefault(retriever.name, 0.0)
            result.own_length[retriever.name] = lengths + float((lists >= 0).sum(axis=1).mean()) / len(days)
            if fill:
                lists = merge(lists, filler.ranked[:top], top)
            for k in ks:
                value = recall_at_k(lists, users, target.user, target.item, k)
                result.per_day.setdefault(retriever.name, {}).setdefault(k, []).append(value)
    for name, by_k in result.per_day.items():
        result.recall[name] = {k: float(np.mean(v)) for k, v in by_k.items()}
    return result
