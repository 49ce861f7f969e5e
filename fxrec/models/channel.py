"""The part of a transfer channel that a RankingModel sees: extra interaction tokens.

Channels (fxrec.transfer) are nn.Modules built outside the model and handed to it; the model only
asks each for its `num_tokens` tokens. Their data, loss and serving sides stay with the channel.
"""

from __future__ import annotations

from typing import Protocol

import torch

from fxrec.data.batches import Batch


class Channel(Protocol):
    name: str
    num_tokens: int

    def tokens(self, batch: Batch, tokens: torch.Tensor) -> torch.Tensor:
        """(B, num_tokens, d) extra interaction inputs; `tokens` (B, n, d) are the model's own."""
        ...
