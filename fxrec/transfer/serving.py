"""The serving side of a transfer channel: what it reads for a request, and from where.

A channel that feeds the VM an input (SUM, TAE, LoopFM, or one of a user's own) declares, next to
its training side:

- `serving_needs() -> Needs`: which serving sources the server must open for it (the user-embedding
  store, the SOLARIS pair cache, the LoopFM publish log); the server opens only what its VM's
  channels need. Channels that only shape training (KD, ExFM) need nothing.
- `serve(request: ServingRequest) -> Served`: its input for the request's candidates, as of the
  request's ts, of the same type it attaches offline (fxrec/data/inputs.py), with where each
  candidate's input came from (`Source`). The as-of rules both paths apply live in `asof.py`.

The scorer (fxrec/serving/scorer.py) loops over the VM's channels and knows none of them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from fxrec.data.inputs import ChannelInput

if TYPE_CHECKING:
    from fxrec.models.output import ModelOutput


class Source(StrEnum):
    """Where an FM-derived input of the VM came from on this request."""

    fresh = "fresh"  # the user's embedding, written by the current FM version within the freshness budget
    stale = "stale"  # the user's embedding, older (another FM version, past the budget, or a local copy)
    pair_cache = "pair-cache"  # SOLARIS: the precomputed (user, item) embedding
    user_aggregate = "user-aggregate"  # SOLARIS: mean of the user's cached pair embeddings
    similar_user = "similar-user"  # SOLARIS: from the nearest users by embedding
    inline = "inline"  # computed by the FM on the request path (the costly configuration)
    missing = "missing"  # nothing available: the VM gets its "missing" input


@dataclass(frozen=True)
class Needs:
    """The serving sources a channel reads; 0 means not needed. Several channels' needs merge with `|`."""

    user_embeddings: int = 0  # width of the published user embedding read from the user-embedding store
    stabilize_k: int = 0  # how many FM versions a user-embedding read averages (SUM's stabilization)
    pair_embeddings: int = 0  # width of the target-aware embeddings read from the SOLARIS pair cache
    loopfm_log: int = 0  # LoopFM codes per user the channel may read from the publish log

    def __or__(self, other: Needs) -> Needs:
        return Needs(**{f.name: max(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})


@dataclass
class UserEmbedding:
    vector: np.ndarray | None  # (d,)
    source: Source
    age_seconds: float | None


class LoopFMHistory(Protocol):
    def sequence(
        self, user_id: int, ts: int, max_len: int, retention_days: float, code_dim: int
    ) -> np.ndarray:
        """(L, code_dim) int8: the user's codes as of ts (`asof.recent_entries`)."""
        ...


class ServingSources(Protocol):
    """What the server opened for its VM's channels (fxrec/serving/sources.py builds it)."""

    loopfm_log: LoopFMHistory | None

    def user_embedding(self, user_id: int, k: int) -> UserEmbedding:
        """The user's stored embedding, the mean of its last k FM versions, tagged fresh/stale/missing."""
        ...

    def pair_embeddings(
        self, user_id: int, item_ids: np.ndarray, user_vector: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, list[Source]]:
        """SOLARIS: (n, d) target-aware embeddings per candidate, found (n,) bool, and their sources."""
        ...


@dataclass
class ServingRequest:
    """One request as a channel sees it: who, which candidates, when, and what the server can read."""

    user_id: int
    item_ids: np.ndarray  # (n,) int64
    ts: int
    sources: ServingSources
    fm_output: ModelOutput | None = None  # the FM on these rows, when it runs inline
    default_k: int = 1  # the user-embedding read a channel gets when it names no k
    _users: dict[int, UserEmbedding] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return len(self.item_ids)

    def inline(self, representation: str) -> torch.Tensor | None:
        """(n, d) the inline FM's representation (e.g. "user", "tae"), or None when the FM did not run."""
        if self.fm_output is None:
            return None
        value = self.fm_output.representations.get(representation)
        return None if value is None else value.float()

    def user_embedding(self, k: int | None = None) -> UserEmbedding:
        """The user's stored embedding averaged over k FM versions (default: the request's `default_k`),
        read once per request and k however many channels ask."""
        k = self.default_k if k is None else k
        if k not in self._users:
            self._users[k] = self.sources.user_embedding(self.user_id, k)
        return self._users[k]


@dataclass
class Served:
    """A channel's input for a request's candidates and the source of each candidate's input."""

    input: ChannelInput
    sources: list[Source]

    @classmethod
    def shared(cls, value: ChannelInput, source: Source, rows: int) -> Served:
        return cls(value, [source] * rows)
