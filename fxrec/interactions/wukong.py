"""A Wukong-style interaction block (Zhang et al., 2024), used as Kunlun's global interaction.

Wukong layers sum a Factorization Machine Block (pairwise dot products -> MLP -> tokens) and a Linear
Compress Block (a token-axis linear map); both see the same input tokens. Here the block maps m input
tokens to n output tokens so it can update the non-sequence tokens from [X_sum ‖ H_summary].
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.interactions.dot import pairwise_dot_products
from fxrec.nn.mlp import MLP
from fxrec.nn.token_mixing import TokenLinear


class WukongBlock(nn.Module):
    """(B, m, d) -> (B, n, d) = FMB(Z) + LCB(Z).

    FMB: the m(m-1)/2 scaled dot products, LayerNorm, MLP to n*d, reshaped to n tokens.
    LCB: a token-axis linear map m -> n.

    Example::

        block = WukongBlock(in_tokens=8, out_tokens=6, dim=16)
        block(torch.randn(4, 8, 16)).shape  # (4, 6, 16)
    """

    def __init__(
        self, in_tokens: int, out_tokens: int, dim: int, hidden: int = 128, activation: str = "silu"
    ):
        super().__init__()
        rows, cols = torch.triu_indices(in_tokens, in_tokens, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        num_pairs = rows.numel()
        self.fm_norm = nn.LayerNorm(num_pairs)
        self.fm_mlp = MLP(num_pairs, [hidden, out_tokens * dim], activation=activation, activate_last=False)
        self.compress = TokenLinear(in_tokens, out_tokens)
        self.out_tokens, self.dim = out_tokens, dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[0]
        fm = self.fm_mlp(self.fm_norm(pairwise_dot_products(z, self.rows, self.cols))).reshape(
            batch, self.out_tokens, self.dim
        )
        return fm + self.compress(z)
