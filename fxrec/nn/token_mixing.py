"""Maps over the token axis: (B, n, d) -> (B, m, d), mixing tokens while leaving each channel alone.

DHEN's shortcut and linear module, InterFormer's summarisation and Kunlun's weight generation all
need "a linear layer over the token axis"; one small module keeps the einsum in one place.
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.nn.mlp import ACTIVATIONS


class TokenLinear(nn.Module):
    """Y = W X + b over the token axis, W: (m, n). Tokens (B, n, d) -> (B, m, d).

    Example::

        proj = TokenLinear(6, 3)
        proj(torch.randn(4, 6, 16)).shape  # (4, 3, 16)
    """

    def __init__(self, in_tokens: int, out_tokens: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_tokens, in_tokens))
        # Bias per output token, broadcast over channels: a token-axis map has no channel identity.
        self.bias = nn.Parameter(torch.zeros(out_tokens, 1)) if bias else None
        # Same init as nn.Linear(in_tokens, out_tokens) so token maps start variance-preserving.
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.in_tokens = in_tokens
        self.out_tokens = out_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("mn,bnd->bmd", self.weight, x)
        return y + self.bias if self.bias is not None else y


class TokenMLP(nn.Module):
    """Token-axis MLP: n -> hidden -> ... -> m tokens, activation between layers (not after the last).

    Example::

        mlp = TokenMLP(6, [12], 3)
        mlp(torch.randn(4, 6, 16)).shape  # (4, 3, 16)
    """

    def __init__(self, in_tokens: int, hidden: list[int], out_tokens: int, activation: str = "silu"):
        super().__init__()
        widths = [in_tokens, *hidden, out_tokens]
        self.layers = nn.ModuleList(TokenLinear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class GatedSummary(nn.Module):
    """InterFormer's summarisation gate: Y = TokenMLP(X), out = Y * sigmoid(TokenLinear(Y)).

    Compresses (B, n, d) -> (B, m, d). The gate lets each channel of each summary token be switched
    off per example (the notes read the paper's `sigma(X * MLP(X))` as `X * sigma(MLP(X))`).

    Example::

        gate = GatedSummary(10, 4)
        gate(torch.randn(2, 10, 16)).shape  # (2, 4, 16)
    """

    def __init__(
        self, in_tokens: int, out_tokens: int, hidden: list[int] | None = None, activation: str = "silu"
    ):
        super().__init__()
        self.compress = TokenMLP(in_tokens, hidden if hidden is not None else [], out_tokens, activation)
        self.gate = TokenLinear(out_tokens, out_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.compress(x)
        return y * torch.sigmoid(self.gate(y))
