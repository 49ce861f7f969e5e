"""UserTower: the FM's user side compressed into one embedding (SUM, Scaling User Modeling).

User-side tokens only (user id, demographics, segments, pooled history) and the user's dense features
-> one user embedding u (B, d_u). Inside the FM, u becomes one token of the interaction, so it must
carry what the FM's tasks need about the user; `fxrec publish` writes it per event and into the
embedding store, and experts read it through the SUM channel (fxrec.transfer.sum).
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.nn.mlp import MLP


class UserTower(nn.Module):
    """(B, n_u, d) user tokens + (B, D_u) user dense -> (B, dim) user embedding.

    Example::

        tower = UserTower(num_tokens=5, token_dim=16, num_dense=1, dim=32)
        tower(torch.randn(8, 5, 16), torch.randn(8, 1)).shape  # (8, 32)
    """

    def __init__(
        self, num_tokens: int, token_dim: int, num_dense: int, dim: int = 32, hidden: list[int] | None = None
    ):
        super().__init__()
        self.dim = dim
        self.body = MLP(num_tokens * token_dim + num_dense, list(hidden or [128]))
        self.out = nn.Linear(self.body.out_features, dim)

    def forward(self, tokens: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        dense = torch.sign(dense) * torch.log1p(dense.abs())
        return self.out(self.body(torch.cat([tokens.flatten(1), dense], dim=1)))
