"""Builders for interaction tests: ragged histories with empty and length-1 rows."""

from __future__ import annotations

import torch

from fxrec.nn.sequence import SequenceTokens

DIM = 16
NUM_TOKENS = 5
# Ragged on purpose: an empty history, a length-1 history, short and longer ones (two length buckets).
LENGTHS = [0, 1, 3, 7, 20]


def make_sequence(lengths: list[int], dim: int = DIM, seed: int = 0, max_len: int = 24) -> SequenceTokens:
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    offsets = torch.tensor([0, *torch.tensor(lengths, dtype=torch.long).cumsum(0).tolist()], dtype=torch.long)
    ages = torch.rand(total, generator=gen) * 1e6
    return SequenceTokens(
        values=torch.randn(total, dim, generator=gen), offsets=offsets, ages=ages, max_len=max_len
    )


def make_tokens(batch: int, num_tokens: int = NUM_TOKENS, dim: int = DIM, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, num_tokens, dim, generator=torch.Generator().manual_seed(seed))
