"""SequenceTokens: the jagged history batch that embeddings produce and sequence modules read."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceTokens:
    """A jagged batch of history tokens (the user's past events), never padded to the batch max.

    values:  (sum of lengths, d) one token per history entry, oldest first within each user
    offsets: (B + 1,) int64; rows offsets[b]:offsets[b+1] belong to example b (may be empty)
    ages:    (sum of lengths,) float32 seconds between each history entry and its example's event
    max_len: the history cap L (a python int, for kernels that scale by it or bucket on it)
    types:   (sum of lengths,) int64 event type of each entry, 0-based (None unless the model names an
             event-type feature, see SparseArch `type_feature`)
    """

    values: torch.Tensor
    offsets: torch.Tensor
    ages: torch.Tensor | None
    max_len: int
    types: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def batch_size(self) -> int:
        return int(self.offsets.numel() - 1)
