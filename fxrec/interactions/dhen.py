"""DHEN (Zhang et al., 2022): a stack of layers, each an ensemble of heterogeneous interaction modules.

X_{k+1} = LayerNorm(Ensemble_i Module_i(X_k) + ShortCut(X_k)). Each module maps (B, n, d) -> (B, l, d):

- "dot":       DLRM pairwise dot products projected to l tokens (`DOT` with keep_inputs=False);
- "dcn":       W (X X^T) + b with X the d x n feature matrix: X X^T = sum_i x_i x_i^T is the (d, d) channel
               Gram matrix (the matrix form of DCN's x_0 x^T w), W: (l, d) picks l mixtures of its rows;
- "attention": TransformerEncoderLayer over the tokens, then a token-axis map n -> l;
- "conv":      Conv2d over the n x d matrix as a 1-channel image, then a token-axis map (c*n) -> l;
- "linear":    a token-axis map n -> l.

Ensemble "sum" / "weighted_sum" (learned scalar per module) keep l tokens; "concat" stacks them to k*l.
The shortcut is the identity when the token count is unchanged, else a learned token-axis map.
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.interactions.base import Interaction
from fxrec.interactions.dot import DOT
from fxrec.nn.sequence import SequenceTokens
from fxrec.nn.token_mixing import TokenLinear

DHEN_MODULES = ("dot", "dcn", "attention", "conv", "linear")
ENSEMBLES = ("sum", "weighted_sum", "concat")


class GramCross(nn.Module):
    """DHEN's DCN module: (B, n, d) -> (B, l, d) = W (X^T X / n) + b, W: (l, d)."""

    def __init__(self, num_tokens: int, dim: int, out_tokens: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_tokens, dim) * dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(out_tokens, dim))
        self.num_tokens = num_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Divide by n so the Gram matrix's scale does not grow with the number of features.
        gram = x.transpose(1, 2) @ x / self.num_tokens  # (B, d, d)
        return torch.einsum("ld,bde->ble", self.weight, gram) + self.bias


class AttentionModule(nn.Module):
    """TransformerEncoderLayer over tokens, then a token-axis map n -> l."""

    def __init__(
        self, num_tokens: int, dim: int, out_tokens: int, num_heads: int, ffn_multiplier: int, dropout: float
    ):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=ffn_multiplier * dim, dropout=dropout, batch_first=True
        )
        self.project = TokenLinear(num_tokens, out_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.encoder(x))


class ConvModule(nn.Module):
    """Conv2d on the (n, d) matrix as an image with `channels` filters, then a token-axis map (c*n) -> l."""

    def __init__(self, num_tokens: int, dim: int, out_tokens: int, channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, kernel_size, padding=kernel_size // 2)
        self.act = nn.ReLU()
        self.project = TokenLinear(channels * num_tokens, out_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, d = x.shape
        feature_maps = self.act(self.conv(x[:, None]))[..., :n, :d]  # (B, c, n, d); crop for even kernels
        return self.project(feature_maps.reshape(batch, -1, d))


class DHENLayer(nn.Module):
    """One DHEN layer: (B, n, d) -> (B, l or k*l, d)."""

    def __init__(
        self,
        in_tokens: int,
        dim: int,
        modules: list[str],
        out_tokens: int,
        ensemble: str,
        num_heads: int,
        ffn_multiplier: int,
        conv_channels: int,
        conv_kernel: int,
        dropout: float,
    ):
        super().__init__()
        built: list[nn.Module] = []
        for name in modules:
            if name == "dot":
                built.append(DOT(in_tokens, dim, output_tokens=out_tokens, keep_inputs=False))
            elif name == "dcn":
                built.append(GramCross(in_tokens, dim, out_tokens))
            elif name == "attention":
                built.append(AttentionModule(in_tokens, dim, out_tokens, num_heads, ffn_multiplier, dropout))
            elif name == "conv":
                built.append(ConvModule(in_tokens, dim, out_tokens, conv_channels, conv_kernel))
            elif name == "linear":
                built.append(TokenLinear(in_tokens, out_tokens))
            else:
                raise ValueError(f"unknown DHEN module {name!r}; known: {list(DHEN_MODULES)}")
        self.blocks = nn.ModuleList(built)
        self.ensemble = ensemble
        self.mix = nn.Parameter(torch.ones(len(built))) if ensemble == "weighted_sum" else None
        self.out_tokens = out_tokens * len(built) if ensemble == "concat" else out_tokens
        self.shortcut = (
            nn.Identity() if self.out_tokens == in_tokens else TokenLinear(in_tokens, self.out_tokens)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [block(x) for block in self.blocks]
        if self.ensemble == "concat":
            mixed = torch.cat(outputs, dim=1)
        elif self.mix is not None:
            mixed = torch.einsum("k,kbld->bld", self.mix, torch.stack(outputs))
        else:
            mixed = torch.stack(outputs).sum(0)
        return self.norm(mixed + self.shortcut(x))


class DHEN(Interaction):
    """Tokens (B, n, d) -> (B, l_N, d) through `num_layers` DHEN layers.

    `output_tokens` is each module's token count l, per layer (a list) or for all layers (an int);
    default n for sum ensembles and max(1, n // k) for concat (so the width does not grow k-fold).

    Example::

        dhen = DHEN(num_tokens=6, dim=16, modules=["dot", "dcn"], num_layers=2, output_tokens=4)
        dhen(torch.randn(4, 6, 16)).shape  # (4, 4, 16)
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        modules: list[str] | None = None,
        num_layers: int = 2,
        ensemble: str = "sum",
        output_tokens: int | list[int] | None = None,
        num_heads: int = 2,
        ffn_multiplier: int = 2,
        conv_channels: int = 4,
        conv_kernel: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        names = list(modules) if modules is not None else ["dot", "dcn"]
        if not names:
            raise ValueError("DHEN needs at least one module")
        if ensemble not in ENSEMBLES:
            raise ValueError(f"DHEN ensemble must be one of {list(ENSEMBLES)}, got {ensemble!r}")
        if isinstance(output_tokens, list):
            if len(output_tokens) != num_layers:
                raise ValueError(
                    f"DHEN output_tokens has {len(output_tokens)} entries for {num_layers} layers"
                )
            per_layer = output_tokens
        else:
            default = num_tokens if ensemble != "concat" else max(1, num_tokens // len(names))
            per_layer = [output_tokens if output_tokens is not None else default] * num_layers
        layers = []
        width = num_tokens
        for out_tokens in per_layer:
            layer = DHENLayer(
                width,
                dim,
                names,
                out_tokens,
                ensemble,
                num_heads,
                ffn_multiplier,
                conv_channels,
                conv_kernel,
                dropout,
            )
            layers.append(layer)
            width = layer.out_tokens
        self.layers = nn.ModuleList(layers)
        self.num_outputs = width

    def forward(self, tokens: torch.Tensor, sequence: SequenceTokens | None = None) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens
