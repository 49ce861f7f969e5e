"""Attention factorization machine: G = X Xᵀ Y, the DOT-compress interaction C2AL analyses.

The pairwise interaction matrix X Xᵀ (B, n, n) of the tokens (scaled by 1/√d) is compressed by a
learned matrix Y (n, m) into G = X Xᵀ Y (B, n, m): each of the m columns of Y attends over the
interaction partners of every token. G is flattened and projected to `output_tokens` tokens of size d
(as DOT projects its products), optionally after the input tokens. Since ∇_Y L = (X Xᵀ)ᵀ ∇_G L, every
loss on the shared encoder, C2AL's auxiliary heads included, reaches Y directly; `y_density()` reports
how dense Y has become (Gini of |Y|, histogram; `fxrec.metrics.density`).

Example::

    afm = AttentionFM(num_tokens=6, dim=16, compressed=4, output_tokens=2)
    afm(torch.randn(8, 6, 16)).shape  # (8, 8, 16)
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.interactions.base import Interaction
from fxrec.metrics.density import density_report
from fxrec.nn.sequence import SequenceTokens


class AttentionFM(Interaction):
    """Tokens (B, n, d) -> (B, n + l, d) (or (B, l, d) with `keep_inputs=False`), l = output_tokens.

    `compressed`: m, the columns of Y (None: n); `output_tokens`: l (None: n).
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        compressed: int | None = None,
        output_tokens: int | None = None,
        keep_inputs: bool = True,
    ):
        super().__init__()
        if num_tokens < 2:
            raise ValueError("AttentionFM needs at least two tokens")
        self.dim = dim
        self.keep_inputs = keep_inputs
        self.compressed = compressed if compressed is not None else num_tokens
        self.output_tokens = output_tokens if output_tokens is not None else num_tokens
        if self.compressed < 1 or self.output_tokens < 1:
            raise ValueError(
                f"AttentionFM needs compressed >= 1 and output_tokens >= 1, got {compressed}, {output_tokens}"
            )
        self.y = nn.Parameter(torch.randn(num_tokens, self.compressed) / num_tokens**0.5)
        self.project = nn.Linear(num_tokens * self.compressed, self.output_tokens * dim)
        self.num_outputs = self.output_tokens + (num_tokens if keep_inputs else 0)

    def interactions(self, tokens: torch.Tensor) -> torch.Tensor:
        """G = X Xᵀ Y / √d: (B, n, m)."""
        gram = tokens @ tokens.transpose(1, 2) / self.dim**0.5  # (B, n, n)
        return gram @ self.y

    def forward(self, tokens: torch.Tensor, sequence: SequenceTokens | None = None) -> torch.Tensor:
        batch = tokens.shape[0]
        out = self.project(self.interactions(tokens).reshape(batch, -1)).reshape(
            batch, self.output_tokens, self.dim
        )
        return torch.cat([tokens, out], dim=1) if self.keep_inputs else out

    @torch.no_grad()
    def y_density(self, bins: int = 20) -> dict:
        """How dense Y is: Gini of |Y|, the share of entries above 10% of the largest, a histogram."""
        return density_report(self.y.detach().cpu().numpy(), bins)
