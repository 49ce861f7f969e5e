"""Layers that transform a jagged history in place: (N, d) -> (N, d), offsets unchanged.

- `JaggedSelfAttentionBlock`: multi-head self-attention with RoPE / ROTE, optional sliding window;
- `GDPAFeedForward`: Kunlun's personalized FFN as one GDPA call with per-example weight tokens.
Both are post-norm residual blocks: S <- LayerNorm(S + f(S)).
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.interactions.rope import Rotary, apply_rotary
from fxrec.nn.token_mixing import TokenLinear
from fxrec.ops import JaggedPlan, gdpa, jagged_self_attention


class JaggedSelfAttentionBlock(nn.Module):
    """S <- LayerNorm(S + MHA(S)) within each example, rotary on q and k.

    values (N, d), ages (N,) or None -> (N, d). `window=None` is full attention; an int w limits entry i
    to entries j with |i - j| <= w. `rotary` is "position" (RoPE), "time" (ROTE) or "none".

    Example::

        block = JaggedSelfAttentionBlock(dim=16, num_heads=2, window=4)
        plan = JaggedPlan(torch.tensor([0, 3, 3, 4]))
        block(torch.randn(4, 16), plan).shape  # (4, 16)
    """

    def __init__(self, dim: int, num_heads: int, window: int | None = None, rotary: str = "position"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.rotary = Rotary(dim // num_heads, rotary)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, values: torch.Tensor, plan: JaggedPlan, ages: torch.Tensor | None = None
    ) -> torch.Tensor:
        rows, dim = values.shape
        q, k, v = self.qkv(values).reshape(rows, 3, self.num_heads, dim // self.num_heads).unbind(1)
        angles = self.rotary.angles(plan.positions, ages)
        if angles is not None:
            q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        attended = jagged_self_attention(q, k, v, plan, plan.max_len, window=self.window).reshape(rows, dim)
        return self.norm(values + self.out(attended))


class GDPAFeedForward(nn.Module):
    """Kunlun's personalized FFN: S <- LayerNorm(S + W_o GDPA(W_q S, K(X_sum), V(X_sum))).

    values (N, d) jagged, summary X_sum (B, n_sum, d) -> (N, d). K and V are d_ff "weight tokens" per
    example: shared base weights plus a token-axis map of X_sum, so each user gets their own FFN
    `V^T act(K q)` at the cost of one attention call with a short key length d_ff.

    Example::

        ffn = GDPAFeedForward(dim=16, num_summary=4, num_heads=2, hidden=32)
        plan = JaggedPlan(torch.tensor([0, 3, 3]))
        ffn(torch.randn(3, 16), torch.randn(2, 4, 16), plan, max_len=8).shape  # (3, 16)
    """

    def __init__(
        self,
        dim: int,
        num_summary: int,
        num_heads: int,
        hidden: int = 64,
        activation: str = "silu",
        scale: float | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.activation = activation
        self.scale = scale
        self.query = nn.Linear(dim, dim)
        self.key_base = nn.Parameter(torch.randn(hidden, dim) * dim**-0.5)
        self.value_base = nn.Parameter(torch.randn(hidden, dim) * dim**-0.5)
        self.key_from_summary = TokenLinear(num_summary, hidden, bias=False)
        self.value_from_summary = TokenLinear(num_summary, hidden, bias=False)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, values: torch.Tensor, summary: torch.Tensor, plan: JaggedPlan, max_len: int
    ) -> torch.Tensor:
        rows, dim = values.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        batch = summary.shape[0]
        q = self.query(values).reshape(rows, heads, head_dim)
        k = (self.key_base + self.key_from_summary(summary)).reshape(batch, -1, heads, head_dim)
        v = (self.value_base + self.value_from_summary(summary)).reshape(batch, -1, heads, head_dim)
        # GDPA's 1/max_len scale (the kernel's qk_scale) keeps the un-normalised sum bounded.
        scale = self.scale if self.scale is not None else 1.0 / max(max_len, 1)
        out = gdpa(q, k, v, plan, plan.max_len, activation=self.activation, scale=scale).reshape(rows, dim)
        return self.norm(values + self.out(out))
