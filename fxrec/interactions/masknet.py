"""MaskNet merge of k behaviour sequences (InterFormer's preprocessing): MLP_lce(S * MLP_mask(S)).

The contract hands an interaction a single jagged sequence, so several behaviour sequences are merged
per position: the model aligns them (entry t of every sequence, oldest first) and concatenates their
embeddings, giving values (N, k*d). The instance-guided mask MLP_mask re-weights every channel of that
concatenation per entry, and MLP_lce ("linear compression") maps it back to d.
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.nn.mlp import MLP


class MaskNetMerge(nn.Module):
    """(N, k*d) per-position concatenated sequence embeddings -> (N, d).

    Example::

        merge = MaskNetMerge(num_sequences=3, dim=16)
        merge(torch.randn(10, 48)).shape  # (10, 16)
    """

    def __init__(self, num_sequences: int, dim: int, hidden: int | None = None, activation: str = "relu"):
        super().__init__()
        width = num_sequences * dim
        hidden = hidden if hidden is not None else width
        self.mask = MLP(width, [hidden, width], activation=activation, activate_last=False)
        self.compress = MLP(width, [dim], activation=activation, activate_last=False)
        self.in_features = width

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if values.shape[-1] != self.in_features:
            raise ValueError(
                f"MaskNetMerge expects {self.in_features} features per entry, got {values.shape[-1]}"
            )
        return self.compress(values * self.mask(values))
