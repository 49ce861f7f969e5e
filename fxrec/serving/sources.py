"""The serving sources a VM's channels read at request time, opened by the service for their `Needs`.

    user-embedding store  SUM's user embedding (and SOLARIS's similar-user query), tagged fresh/stale
    SOLARIS pair cache    target-aware embeddings per (user, item)
    LoopFM publish log    the user's published LoopFM codes, cut as of each request's ts

Channels read them through a `ServingRequest` (fxrec/transfer/serving.py); the stores are guarded
(guard.py), so a store fault reads as "missing", never as a failed request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fxrec.serving.guard import GuardedStore
from fxrec.serving.loopfm import LoopFMLog
from fxrec.serving.metrics import ServingMetrics
from fxrec.serving.precompute import PairReader
from fxrec.transfer.serving import Source, UserEmbedding


@dataclass
class StoreSources:
    """A `ServingSources` over the server's guarded stores and logs; None where no channel needs one."""

    metrics: ServingMetrics
    user_store: GuardedStore | None = None
    pair_reader: PairReader | None = None
    loopfm_log: LoopFMLog | None = None
    fm_version: int | None = None  # the serving FM's version (yyyymmdd): a write of it can be fresh
    fresh_seconds: float = 3600.0

    def user_embedding(self, user_id: int, k: int) -> UserEmbedding:
        if self.user_store is None:
            return UserEmbedding(None, Source.missing, None)
        read, local = self.user_store.read(np.array([user_id], dtype=np.int64), k)
        if not read.found[0]:
            return UserEmbedding(None, Source.missing, None)
        age = max(0.0, self.user_store.clock() - float(read.ts[0]))
        self.metrics.staleness.observe(age)
        fresh = not local[0] and int(read.version[0]) == self.fm_version and age <= self.fresh_seconds
        return UserEmbedding(read.vectors[0], Source.fresh if fresh else Source.stale, age)

    def pair_embeddings(
        self, user_id: int, item_ids: np.ndarray, user_vector: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, list[Source]]:
        assert self.pair_reader is not None, "the service opens the pair cache for a channel that needs it"
        return self.pair_reader.read(user_id, item_ids, user_vector)
