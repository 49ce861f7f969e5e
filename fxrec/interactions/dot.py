"""DOT: DLRM's pairwise dot-product interaction (Naumov et al., 2019), in token form.

DLRM takes the dot product of every pair of feature embeddings and feeds the flat list to the top MLP.
Here the n(n-1)/2 upper-triangle products z_ij = <x_i, x_j> / sqrt(d) are projected back to
`output_tokens` tokens of size d by one linear map (DHEN's W_m, reshaped), so DOT keeps the
(B, n, d) -> (B, l, d) contract and can be stacked. With `keep_inputs=True` (the default, like DLRM
concatenating the dense vector with the products) the input tokens are passed through in front:
output = [x_1..x_n ‖ p_1..p_l].
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.interactions.base import Interaction
from fxrec.nn.sequence import SequenceTokens


def pairwise_dot_products(tokens: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B, n, d) -> (B, P): <x_i, x_j> / sqrt(d) for the index pairs (rows[p], cols[p])."""
    gram = tokens @ tokens.transpose(1, 2) / tokens.shape[-1] ** 0.5  # (B, n, n)
    return gram[:, rows, cols]


class DOT(Interaction):
    """Tokens (B, n, d) -> (B, n + l, d) (or (B, l, d) with `keep_inputs=False`), l = output_tokens.

    `self_interaction=True` also keeps the squared norms <x_i, x_i> (the diagonal).

    Example::

        dot = DOT(num_tokens=6, dim=16, output_tokens=2)
        dot(torch.randn(4, 6, 16)).shape  # (4, 8, 16)
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        output_tokens: int | None = None,
        keep_inputs: bool = True,
        self_interaction: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.keep_inputs = keep_inputs
        self.output_tokens = output_tokens if output_tokens is not None else num_tokens
        rows, cols = torch.triu_indices(num_tokens, num_tokens, offset=0 if self_interaction else 1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        num_pairs = rows.numel()
        if num_pairs == 0:
            raise ValueError("DOT needs at least two tokens (or self_interaction=True)")
        self.project = nn.Linear(num_pairs, self.output_tokens * dim)
        self.num_outputs = self.output_tokens + (num_tokens if keep_inputs else 0)

    def forward(self, tokens: torch.Tensor, sequence: SequenceTokens | None = None) -> torch.Tensor:
        batch = tokens.shape[0]
        products = self.project(pairwise_dot_products(tokens, self.rows, self.cols)).reshape(
            batch, self.output_tokens, self.dim
        )
        return torch.cat([tokens, products], dim=1) if self.keep_inputs else products
