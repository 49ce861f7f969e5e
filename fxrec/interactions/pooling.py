"""Summarising a jagged history into a fixed number of tokens: PMA and Kunlun's Hierarchical Seed Pooling.

Both use learnable queries ("seeds") that attend over each example's history; an empty history yields
just the (normalised) seeds, so every example gets the same number of summary tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.ops import JaggedPlan, jagged_dense_attention


class PoolingAttention(nn.Module):
    """Multi-head attention of dense queries over a jagged sequence.

    queries (B, m, d), values (N, d) with `plan` over its offsets -> (B, m, d).

    Example::

        pool = PoolingAttention(dim=16, num_heads=2)
        plan = JaggedPlan(torch.tensor([0, 3, 3]))
        pool(torch.randn(2, 4, 16), torch.randn(3, 16), plan).shape  # (2, 4, 16)
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, values: torch.Tensor, plan: JaggedPlan) -> torch.Tensor:
        batch, m, dim = queries.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.query(queries).reshape(batch, m, heads, head_dim)
        k, v = self.key_value(values).reshape(-1, 2, heads, head_dim).unbind(1)
        return self.out(jagged_dense_attention(q, k, v, plan, plan.max_len).reshape(batch, m, dim))


class PMA(nn.Module):
    """Pooling by multi-head attention (Set Transformer): k learnable seeds attend to the history.

    (N, d) jagged -> (B, num_seeds, d); out = LayerNorm(seeds + MHA(seeds, S, S)).

    Example::

        pma = PMA(dim=16, num_seeds=2, num_heads=2)
        pma(torch.randn(3, 16), JaggedPlan(torch.tensor([0, 3, 3]))).shape  # (2, 2, 16)
    """

    def __init__(self, dim: int, num_seeds: int, num_heads: int):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(num_seeds, dim) * dim**-0.5)
        self.attend = PoolingAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)
        self.num_outputs = num_seeds

    def forward(self, values: torch.Tensor, plan: JaggedPlan) -> torch.Tensor:
        seeds = self.seeds.expand(plan.batch_size, -1, -1)
        return self.norm(seeds + self.attend(seeds, values, plan))


class SumKronLinear(nn.Module):
    """Y = sum_i Z_i^T X W_i: a rank-k sum of Kronecker-factored maps (B, m, d) -> (B, l, d).

    A full map on the flattened (m*d) tokens costs m*d*l*d weights; the rank-k Kronecker sum costs
    k*(m*l + d*d) and still mixes tokens (Z_i) and channels (W_i) jointly.

    Example::

        skl = SumKronLinear(in_tokens=16, out_tokens=4, dim=8, rank=2)
        skl(torch.randn(3, 16, 8)).shape  # (3, 4, 8)
    """

    def __init__(self, in_tokens: int, out_tokens: int, dim: int, rank: int = 2):
        super().__init__()
        self.token_maps = nn.Parameter(torch.randn(rank, in_tokens, out_tokens) * (in_tokens * rank) ** -0.5)
        self.channel_maps = nn.Parameter(torch.randn(rank, dim, dim) * dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(out_tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kml,bmd,kde->ble", self.token_maps, x, self.channel_maps) + self.bias


class HierarchicalSeedPooling(nn.Module):
    """Kunlun's HSP: overcomplete seeds attend to the history, then SumKronLinear compresses them.

    (N, d) jagged -> (B, num_outputs, d). `seed_multiplier * num_outputs` seeds each pool a view of the
    history, then Y = SumKronLinear(Z) with

        Z = MHA(LayerNorm(seeds), S, S)            (residual=False: the paper's form)
        Z = seeds + MHA(LayerNorm(seeds), S, S)    (residual=True)

    The residual keeps each seed's own vector in Z (an empty history gives the seeds themselves, not one
    shared bias vector); it is the default because it measured better on a seeded Kunlun comparison.

    Example::

        hsp = HierarchicalSeedPooling(dim=16, num_outputs=2, num_heads=2)
        hsp(torch.randn(3, 16), JaggedPlan(torch.tensor([0, 3, 3]))).shape  # (2, 2, 16)
    """

    def __init__(
        self, dim: int, num_outputs: int, num_heads: int, seed_multiplier: int = 4, rank: int = 2, residual: bool = True
    ):
        super().__init__()
        num_seeds = seed_multiplier * num_outputs
        self.seeds = nn.Parameter(torch.randn(num_seeds, dim) * dim**-0.5)
        self.seed_norm = nn.LayerNorm(dim)
        self.attend = PoolingAttention(dim, num_heads)
        self.compress = SumKronLinear(num_seeds, num_outputs, dim, rank)
        self.num_outputs = num_outputs
        self.residual = residual

    def forward(self, values: torch.Tensor, plan: JaggedPlan) -> torch.Tensor:
        seeds = self.seeds.expand(plan.batch_size, -1, -1)
        pooled = self.attend(self.seed_norm(seeds), values, plan)  # (B, num_seeds, d)
        if self.residual:
            pooled = seeds + pooled
        return self.compress(pooled)


def build_pooling(
    kind: str, dim: int, num_outputs: int, num_heads: int, seed_multiplier: int = 4, rank: int = 2, residual: bool = True
) -> nn.Module:
    """`"hsp"` (Kunlun default; `residual` picks its form) or `"pma"` (InterFormer's pooling, the
    baseline HSP replaces)."""
    if kind == "hsp":
        return HierarchicalSeedPooling(dim, num_outputs, num_heads, seed_multiplier, rank, residual)
    if kind == "pma":
        return PMA(dim, num_outputs, num_heads)
    raise ValueError(f"pooling must be 'hsp' or 'pma', got {kind!r}")
