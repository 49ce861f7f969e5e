"""DCNv2 (Wang et al., 2021): low-rank cross network over the flattened tokens.

x_{l+1} = x_0 * (U_l (V_l x_l) + b_l) + x_l, with U_l: r -> n*d and V_l: n*d -> r (r = low_rank);
`low_rank=None` is the full-rank cross x_0 * (W_l x_l + b_l) + x_l, W_l: n*d -> n*d.
`structure="stacked"` returns the cross output as n tokens; `"parallel"` appends a deep MLP's output
(reshaped into tokens) next to it, as DCNv2's parallel variant does.
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.interactions.base import Interaction
from fxrec.nn.mlp import MLP
from fxrec.nn.sequence import SequenceTokens


class LowRankCross(nn.Module):
    """Stack of cross layers on (B, D) vectors: low-rank (U V), or full-rank W when low_rank is None."""

    def __init__(self, in_features: int, num_layers: int, low_rank: int | None):
        super().__init__()
        self.down = nn.ModuleList(
            nn.Identity() if low_rank is None else nn.Linear(in_features, low_rank, bias=False)
            for _ in range(num_layers)
        )
        self.up = nn.ModuleList(nn.Linear(low_rank or in_features, in_features) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for down, up in zip(self.down, self.up, strict=True):
            x = torch.addcmul(x, x0, up(down(x)))  # x0 * (U V x + b) + x in one pass over (B, n*d)
        return x


class DCNv2(Interaction):
    """Tokens (B, n, d) -> (B, n [+ k], d).

    Example::

        dcn = DCNv2(num_tokens=6, dim=16, num_layers=3, low_rank=32)
        dcn(torch.randn(4, 6, 16)).shape  # (4, 6, 16)
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_layers: int = 3,
        low_rank: int | None = 32,
        structure: str = "stacked",
        deep_layers: list[int] | None = None,
    ):
        super().__init__()
        if structure not in ("stacked", "parallel"):
            raise ValueError(f"DCNv2 structure must be 'stacked' or 'parallel', got {structure!r}")
        self.dim = dim
        self.cross = LowRankCross(num_tokens * dim, num_layers, low_rank)
        self.deep: MLP | None = None
        self.num_outputs = num_tokens
        if structure == "parallel":
            sizes = deep_layers or [256, 128]
            if sizes[-1] % dim:
                raise ValueError(
                    f"DCNv2 parallel: the deep MLP's last width ({sizes[-1]}) must be a multiple of dim ({dim})"
                )
            self.deep = MLP(num_tokens * dim, sizes)
            self.num_outputs += sizes[-1] // dim

    def forward(self, tokens: torch.Tensor, sequence: SequenceTokens | None = None) -> torch.Tensor:
        batch = tokens.shape[0]
        x0 = tokens.reshape(batch, -1)  # (B, n*d)
        out = self.cross(x0)
        if self.deep is not None:
            out = torch.cat([out, self.deep(x0)], dim=1)
        return out.reshape(batch, self.num_outputs, self.dim)
