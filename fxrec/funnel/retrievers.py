"""Retrievers: ALURE graph retrieval and the baselines it is measured against.

Each retriever is told the day it serves and the clicks before that day (`prepare`), then returns a
ranked candidate list per user (`retrieve`). Nothing else reaches it, so the retrieval of day t can
only use what was known before day t (ALURE also reads published user embeddings, again only those
written before day t).

- `AlureRetriever` (ALURE, arXiv 2406.05898): a kNN user graph over the FM's published user
  embeddings; candidates = ads the user's neighbours clicked in a recent window (weighted by
  similarity and recency), merged after the user's own real-time activity, deduplicated and capped.
- `PopularityRetriever`: the most clicked ads of a recent window (recency-weighted), for everyone.
- `CoEngagementRetriever`: item-to-item, ads co-clicked (by the same users) with the user's recent clicks.
- `TwoTowerRetriever` (`fxrec.funnel.two_tower`): a user and an ad tower trained on the same clicks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fxrec.data.eventlog import day_start_ts
from fxrec.funnel.engagements import Engagements
from fxrec.funnel.lists import decay, index_of, merge, recent_items, top_items
from fxrec.funnel.neighbours import UserGraph, build_graph
from fxrec.funnel.two_tower import TwoTowerRetriever
from fxrec.funnel.user_embeddings import published_user_embeddings


class Retriever(Protocol):
    name: str

    def prepare(self, day: str, history: Engagements) -> None:
        """Get ready to serve `day`, knowing only `history`: the clicks before it."""

    def retrieve(self, users: np.ndarray, k: int) -> np.ndarray:
        """(n, k) ranked item ids per user, -1 padded."""


class PopularityRetriever:
    """The same list for everyone: recency-weighted click counts of the last `window_days`."""

    name = "popularity"

    def __init__(self, window_days: float = 3.0, half_life_days: float = 1.0):
        self.window_days, self.half_life_days = window_days, half_life_days
        self.ranked = np.zeros(0, np.int64)

    def prepare(self, day: str, history: Engagements) -> None:
        now = day_start_ts(day)
        recent = history.between(now - int(self.window_days * 86400), now)
        items, inverse = np.unique(recent.item, return_inverse=True)
        weight = np.bincount(
            inverse, weights=decay(recent.ts, now, self.half_life_days), minlength=len(items)
        )
        self.ranked = items[np.lexsort((items, -weight))]

    def retrieve(self, users: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(users), k), -1, np.int64)
        out[:, : min(k, len(self.ranked))] = self.ranked[:k]
        return out


def _click_matrix(
    recent: Engagements, now: int, half_life_days: float, users: np.ndarray, items: np.ndarray
) -> torch.Tensor:
    """(len(users), len(items)) recency-weighted clicks, sparse (COO, summed duplicates)."""
    rows, cols = index_of(recent.user, users), index_of(recent.item, items)
    keep = (rows >= 0) & (cols >= 0)
    index = torch.from_numpy(np.stack([rows[keep], cols[keep]]))
    values = torch.from_numpy(decay(recent.ts[keep], now, half_life_days))
    return torch.sparse_coo_tensor(index, values, (len(users), len(items)), check_invariants=True).coalesce()


# day -> (users sorted, vectors) known before the day starts
UserEmbeddings = Callable[[str], tuple[np.ndarray, np.ndarray]]


class AlureRetriever:
    """ALURE: the user's own recent clicks first, then the ads their graph neighbours clicked.

    `embeddings` is a publish directory (the FM's user tower, `published_user_embeddings`) or any
    function of the day returning (users, vectors) known before it. With `prior` > 0, the neighbours'
    clicks are smoothed toward everyone's click share of the window (`prior` pseudo-clicks).
    """

    name = "alure"

    def __init__(
        self,
        embeddings: Path | str | UserEmbeddings,
        neighbours: int = 50,
        window_days: float = 3.0,
        half_life_days: float = 1.0,
        own_length: int = 20,
        prior: float = 300.0,
        search: str = "hnsw",
        embedding_max_age_days: float | None = None,
    ):
        if callable(embeddings):
            self.embeddings = embeddings
        else:
            publish_dir, age = Path(embeddings), embedding_max_age_days
            self.embeddings = lambda day: published_user_embeddings(publish_dir, day, age)[:2]
        self.k, self.window_days, self.half_life_days = neighbours, window_days, half_life_days
        self.own_length, self.search = own_length, search
        self.prior = prior
        self.graph = self._empty_graph()
        self.recent = Engagements.of(np.zeros(0), np.zeros(0), np.zeros(0))
        self.now = 0

    def _empty_graph(self) -> UserGraph:
        return UserGraph(
            np.zeros(0, np.int64), np.zeros((0, self.k), np.int64), np.zeros((0, self.k), np.float32)
        )

    def prepare(self, day: str, history: Engagements) -> None:
        users, vectors = self.embeddings(day)
        self.graph = build_graph(users, vectors, self.k, self.search) if len(users) else self._empty_graph()
        self.now = day_start_ts(day)
        self.recent = history.between(self.now - int(self.window_days * 86400), self.now)

    def neighbour_scores(self, users: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """(n, items) similarity- and recency-weighted clicks of each user's neighbours, and the items."""
        clickers, items = np.unique(self.recent.user), np.unique(self.recent.item)
        clicks = _click_matrix(self.recent, self.now, self.half_life_days, clickers, items)
        rows = self.graph.rows_of(users)
        known = rows >= 0
        neighbours = np.where(known[:, None], self.graph.neighbours[np.maximum(rows, 0)], -1)
        similarity = np.where(known[:, None], self.graph.similarity[np.maximum(rows, 0)], 0)
        neighbour_user = np.where(
            neighbours >= 0, self.graph.users[np.maximum(neighbours, 0)] if len(self.graph.users) else -1, -1
        )
        column = index_of(neighbour_user.reshape(-1), clickers).reshape(neighbours.shape)
        keep = (column >= 0) & (similarity > 0)
        row = np.nonzero(keep)[0]
        weights = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([row, column[keep]])),
            torch.from_numpy(similarity[keep].astype(np.float32)),
            (len(users), len(clickers)),
            check_invariants=True,
        )
        scores = torch.sparse.mm(weights, clicks.to_dense())
        if self.prior > 0:
            # The neighbours' clicks as evidence, smoothed toward everyone's click share: `prior`
            # pseudo-clicks spread like the window's clicks (the same order as their posterior mean).
            everyone = torch.sparse.sum(clicks, dim=0).to_dense()
            scores = scores + self.prior * everyone / everyone.sum().clamp_min(1e-12)
        return scores, items

    def retrieve(self, users: np.ndarray, k: int) -> np.ndarray:
        own = recent_items(self.recent, users, self.own_length)  # real-time activity, newest first
        scores, items = self.neighbour_scores(users)
        return merge(own, top_items(scores, items, k), k)


class CoEngagementRetriever:
    """Item-to-item: cosine co-click similarity between ads over the last `window_days` (users who
    clicked both); a user's candidates are the ads most co-clicked with their recent clicks."""

    name = "item_to_item"

    def __init__(self, window_days: float = 7.0, half_life_days: float = 2.0, seeds: int = 20):
        self.window_days, self.half_life_days, self.seeds = window_days, half_life_days, seeds
        self.items = np.zeros(0, np.int64)
        self.similar = torch.zeros(0, 0)
        self.recent = Engagements.of(np.zeros(0), np.zeros(0), np.zeros(0))
        self.now = 0

    def prepare(self, day: str, history: Engagements) -> None:
        self.now = day_start_ts(day)
        self.recent = history.between(self.now - int(self.window_days * 86400), self.now)
        users, self.items = np.unique(self.recent.user), np.unique(self.recent.item)
        clicked = _click_matrix(self.recent, self.now, self.half_life_days, users, self.items)
        binary = torch.sparse_coo_tensor(
            clicked.indices(), torch.ones(clicked.indices().shape[1]), clicked.shape, check_invariants=True
        )
        both = torch.sparse.mm(binary.t(), binary.to_dense())  # (items, items) users who clicked both
        count = both.diagonal().clone()
        both.fill_diagonal_(0)
        self.similar = both / torch.sqrt(count[:, None] * count[None, :]).clamp_min(1)

    def retrieve(self, users: np.ndarray, k: int) -> np.ndarray:
        seeds = recent_items(self.recent, users, self.seeds)
        column = index_of(seeds.reshape(-1), self.items).reshape(seeds.shape)
        weight = np.where(column >= 0, 0.9 ** np.arange(self.seeds)[None, :], 0.0).astype(np.float32)
        profile = torch.zeros(len(users), len(self.items))
        rows = np.nonzero(column >= 0)[0]
        profile.index_put_(
            (torch.from_numpy(rows), torch.from_numpy(column[column >= 0])),
            torch.from_numpy(weight[column >= 0]),
            accumulate=True,
        )
        return top_items(profile @ self.similar, self.items, k)


__all__ = ["AlureRetriever", "CoEngagementRetriever", "PopularityRetriever", "Retriever", "TwoTowerRetriever"]
