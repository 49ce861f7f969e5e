"""SOLARIS online: predict the (user, item) pairs that will be requested, precompute their FM pair
embeddings (TAE) in the background, and read them at request time with fallbacks.

- `PairPredictor`, the "draft": a user's next request will likely carry the candidates of their
  recent requests, and the items they clicked (the ads that keep reaching late-stage ranking).
- the precompute itself runs in the refresh worker (`refresher.py`): FM on the predicted pairs not
  already cached -> the pair cache (a store with a TTL, keys (user, item)); the mean of the user's
  cached pairs -> the user-aggregate store.
- `PairReader` is the request-time lookup, per candidate: pair cache -> the user's aggregate -> the
  mean aggregate of the user's nearest neighbours by user embedding (`SimilarUsers`) -> missing.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from fxrec.serving.catalog import FeatureCatalog
from fxrec.serving.guard import GuardedStore
from fxrec.serving.schemas import Source

log = logging.getLogger(__name__)


class PairPredictor:
    """The pairs worth precomputing for a user: recent request candidates first, then clicked items."""

    def __init__(self, catalog: FeatureCatalog, max_pairs: int = 256):
        self.catalog = catalog
        self.max_pairs = max_pairs
        self.click_source = "item_id" if "item_id" in catalog.spec.sequence_sources() else None

    def predict(self, user_id: int, recent_items: list[int]) -> np.ndarray:
        items = list(recent_items)
        history = self.catalog.history_of(user_id)
        if history is not None and self.click_source is not None:
            items += history.values[self.click_source][::-1].tolist()  # most recent click first
        return np.fromiter(dict.fromkeys(items), dtype=np.int64)[: self.max_pairs]


class SimilarUsers:
    """Nearest users by cosine similarity of their user embeddings, among users that have an
    aggregate pair embedding; a lookup returns the mean aggregate of the k nearest.

    Rebuilt in the background (`rebuild`), read on the request path (`lookup`): the swap of the
    (users, matrix, aggregates) triple is one attribute assignment, so readers never see a mix.
    """

    def __init__(self, k: int = 10):
        self.k = k
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def size(self) -> int:
        return 0 if self._index is None else len(self._index[0])

    def rebuild(self, users: np.ndarray, user_vectors: np.ndarray, aggregates: np.ndarray) -> None:
        norms = np.linalg.norm(user_vectors, axis=1, keepdims=True)
        keep = norms[:, 0] > 0
        self._index = (
            users[keep],
            (user_vectors[keep] / norms[keep]).astype(np.float32),
            aggregates[keep].astype(np.float32),
        )

    def lookup(self, user_id: int, user_vector: np.ndarray) -> np.ndarray | None:
        index = self._index
        norm = float(np.linalg.norm(user_vector))
        if index is None or len(index[0]) == 0 or norm == 0.0:
            return None
        users, matrix, aggregates = index
        similarity = matrix @ (user_vector / norm)
        similarity[users == user_id] = -np.inf
        k = min(self.k, len(users) - int((users == user_id).any()))
        if k <= 0:
            return None
        nearest = np.argpartition(-similarity, k - 1)[:k]
        return aggregates[nearest].mean(axis=0)


class PairReader:
    """Request-time SOLARIS lookup with the fallback chain (see module docstring)."""

    def __init__(self, pairs: GuardedStore, aggregates: GuardedStore, similar: SimilarUsers | None):
        self.pairs = pairs
        self.aggregates = aggregates
        self.similar = similar
        self.dim = pairs.dim

    def read(
        self, user_id: int, item_ids: np.ndarray, user_vector: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, list[Source]]:
        """(vectors (n, d), found (n,) bool, source per candidate)."""
        n = len(item_ids)
        keys = np.stack([np.full(n, user_id, dtype=np.int64), item_ids.astype(np.int64)], axis=1)
        pair, _ = self.pairs.read(keys)
        vectors, found = pair.vectors.copy(), pair.found.copy()
        sources = [Source.pair_cache if hit else Source.missing for hit in found]
        if found.all():
            return vectors, found, sources
        fallback, source = self._user_level(user_id, user_vector)
        if fallback is not None:
            misses = ~found
            vectors[misses] = fallback
            found[misses] = True
            sources = [s if s is Source.pair_cache else source for s in sources]
        return vectors, found, sources

    def _user_level(self, user_id: int, user_vector: np.ndarray | None) -> tuple[np.ndarray | None, Source]:
        aggregate, _ = self.aggregates.read(np.array([user_id], dtype=np.int64))
        if aggregate.found[0]:
            return aggregate.vectors[0], Source.user_aggregate
        if self.similar is not None and user_vector is not None:
            neighbours = self.similar.lookup(user_id, user_vector)
            if neighbours is not None:
                return neighbours, Source.similar_user
        return None, Source.missing


class SimilarUsersIndexer:
    """Rebuilds a SimilarUsers index every `every` seconds from the stores, on a daemon thread.

    Candidates are the catalog's users (a store cannot be scanned); those with an aggregate and a
    user embedding enter the index.
    """

    def __init__(
        self,
        similar: SimilarUsers,
        users: np.ndarray,
        user_store: GuardedStore,
        aggregates: GuardedStore,
        every: float = 10.0,
        chunk: int = 1024,
    ):
        self.similar = similar
        self.users = users.astype(np.int64)
        self.user_store = user_store
        self.aggregates = aggregates
        self.every = every
        self.chunk = chunk
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="similar-users", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def rebuild_now(self) -> int:
        users, user_vectors, aggregates = [], [], []
        for start in range(0, len(self.users), self.chunk):
            if start:
                time.sleep(0.001)  # between chunks the request path gets the GIL back
            keys = self.users[start : start + self.chunk]
            aggregate, _ = self.aggregates.read(keys, remember=False)
            if not aggregate.found.any():
                continue
            keys_with = keys[aggregate.found]
            embedding, _ = self.user_store.read(keys_with, remember=False)
            users.append(keys_with[embedding.found])
            user_vectors.append(embedding.vectors[embedding.found])
            aggregates.append(aggregate.vectors[aggregate.found][embedding.found])
        if users:
            self.similar.rebuild(
                np.concatenate(users), np.concatenate(user_vectors), np.concatenate(aggregates)
            )
        return self.similar.size

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.rebuild_now()
            except Exception:  # the index keeps its last version; the next round retries
                log.exception("similar-users rebuild failed")
            self._stop.wait(self.every)
