"""The FM side of SOAP and SOLARIS: turn refresh jobs into store writes.

For a batch of jobs (one per user) `Refresher.run`:

1. SUM: one row per user through the FM's user tower -> the user store, tagged with the FM version
   and the event-clock write time (how "fresh" is judged on the read side);
2. SOLARIS: the predicted pairs of each user that the pair cache does not hold yet (up to
   `pair_budget` per batch) through the full FM -> their TAE into the pair cache (a store with a
   TTL); then each user's aggregate, the mean of all their cached pairs, into the aggregate store.

It runs in the server's refresh processes or thread (embedded) or in `fxrec refresh-worker` processes (Redis);
both the request path and these writes go through `GuardedStore`, so a store outage makes the
refresh skip its writes rather than fail the worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fxrec.run import LoadedModel
from fxrec.serving.catalog import FeatureCatalog
from fxrec.serving.guard import GuardedStore
from fxrec.serving.precompute import PairPredictor
from fxrec.serving.rows import catalog_rows, histories_of, model_batch
from fxrec.serving.soap import RefreshJob


def has_user_tower(fm: LoadedModel) -> bool:
    return getattr(fm.model, "user_tower", None) is not None


def has_target_attention(fm: LoadedModel) -> bool:
    return getattr(fm.model, "target_attention", None) is not None


@dataclass
class RefreshTargets:
    """Where a refresh writes; None disables that part."""

    user_store: GuardedStore | None = None
    pair_store: GuardedStore | None = None
    aggregate_store: GuardedStore | None = None


class Refresher:
    def __init__(
        self,
        fm: LoadedModel,
        catalog: FeatureCatalog,
        targets: RefreshTargets,
        predictor: PairPredictor,
        event_clock: Callable[[], float],
        pair_budget: int = 512,
    ):
        self.fm = fm
        self.catalog = catalog
        self.targets = targets
        self.predictor = predictor
        self.event_clock = event_clock
        self.pair_budget = pair_budget
        self.default_surface = (fm.config.surfaces or catalog.spec.surfaces)[0]

    def run(self, jobs: list[RefreshJob]) -> dict[str, int]:
        """Refresh these users; returns counts for the server's metrics (users, pairs predicted,
        skipped_cached, computed) -- counts, not metric objects, so a child process can report them."""
        counts = {"users": len(jobs)}
        if jobs and self.targets.user_store is not None:
            self.refresh_users(jobs)
        if jobs and self.targets.pair_store is not None:
            counts.update(self.precompute_pairs(jobs))
        return counts

    # -- SUM ------------------------------------------------------------------------------------
    @torch.no_grad()
    def user_embeddings(self, jobs: list[RefreshJob]) -> np.ndarray:
        users = np.array([j.user_id for j in jobs], dtype=np.int64)
        items = np.array(
            [j.items[0] if j.items else 0 for j in jobs], dtype=np.int64
        )  # any item: the tower ignores it
        table = catalog_rows(
            self.catalog,
            users,
            items,
            [j.surface or self.default_surface for j in jobs],
            [j.context for j in jobs],
            self._ts(),
        )
        batch = model_batch(
            self.catalog.spec, table, self.fm.model.features, histories_of(self.catalog, users)
        )
        return self.fm.model.user_embedding(batch).float().numpy()

    def refresh_users(self, jobs: list[RefreshJob]) -> None:
        vectors = self.user_embeddings(jobs)
        users = np.array([j.user_id for j in jobs], dtype=np.int64)
        assert self.targets.user_store is not None
        self.targets.user_store.write(users, vectors, self.fm.version_int)

    # -- SOLARIS --------------------------------------------------------------------------------
    @torch.no_grad()
    def pair_embeddings(
        self, users: np.ndarray, items: np.ndarray, surfaces: list[str], contexts: list[dict]
    ) -> np.ndarray:
        table = catalog_rows(self.catalog, users, items, surfaces, contexts, self._ts())
        batch = model_batch(
            self.catalog.spec, table, self.fm.model.features, histories_of(self.catalog, users)
        )
        return self.fm.model(batch).representations["tae"].float().numpy()

    def precompute_pairs(self, jobs: list[RefreshJob]) -> dict[str, int]:
        pairs, aggregates = self.targets.pair_store, self.targets.aggregate_store
        assert pairs is not None
        predicted = [(job, self.predictor.predict(job.user_id, job.items)) for job in jobs]
        keys = np.concatenate(
            [np.stack([np.full(len(items), job.user_id), items], axis=1) for job, items in predicted]
        ).astype(np.int64)
        counts = {"predicted": len(keys), "skipped_cached": 0, "computed": 0}
        if len(keys) == 0:
            return counts
        cached, _ = pairs.read(keys)
        todo = np.flatnonzero(~cached.found)[: self.pair_budget]
        counts["skipped_cached"] = int(cached.found.sum())
        vectors, found = cached.vectors, cached.found.copy()
        if len(todo):
            owner = np.concatenate([np.full(len(items), i) for i, (_, items) in enumerate(predicted)])[todo]
            computed = self.pair_embeddings(
                keys[todo, 0],
                keys[todo, 1],
                [jobs[i].surface or self.default_surface for i in owner],
                [jobs[i].context for i in owner],
            )
            if pairs.write(keys[todo], computed, self.fm.version_int):
                vectors[todo], found[todo] = computed, True
                counts["computed"] = len(todo)
        if aggregates is None:
            return counts
        users = keys[:, 0]
        with_pairs = np.unique(users[found])
        if len(with_pairs) == 0:
            return counts
        means = np.stack([vectors[(users == u) & found].mean(axis=0) for u in with_pairs])
        aggregates.write(with_pairs, means, self.fm.version_int)
        return counts

    def _ts(self) -> int:
        return int(self.event_clock())
