"""TargetAttention: the candidate attends over the user's jagged history (target-aware embeddings).

The candidate's tokens (by default its item id) form one query over the user's history -- the
target-aware mask: the candidate sees every past event, the history never sees the candidate. The
output (B, d) is a token of the FM's interaction and the published TAE for that (user, candidate)
event, which experts read through the TAE channel (fxrec.transfer.tae).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fxrec.nn.sequence import SequenceTokens
from fxrec.ops import jagged_dense_attention


class TargetAttention(nn.Module):
    """query (B, d) from the candidate, history SequenceTokens -> (B, d).

    Example::

        attention = TargetAttention(16)
        history = SequenceTokens(torch.randn(5, 16), torch.tensor([0, 2, 5]), None, max_len=20)
        attention(torch.randn(2, 16), history).shape  # (2, 16)
    """

    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        if dim % heads:
            raise ValueError(f"target attention: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, candidate: torch.Tensor, history: SequenceTokens) -> torch.Tensor:
        batch, dim = candidate.shape
        head_dim = dim // self.heads
        q = self.query(candidate).view(batch, 1, self.heads, head_dim)
        k = self.key(history.values).view(-1, self.heads, head_dim)
        v = self.value(history.values).view(-1, self.heads, head_dim)
        attended = jagged_dense_attention(
            q, k, v, history.offsets, history.max_len, scale=1 / math.sqrt(head_dim)
        )
        return self.out(torch.cat([attended.reshape(batch, dim), candidate], dim=1))
