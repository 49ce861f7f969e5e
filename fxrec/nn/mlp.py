"""Multi-layer perceptrons."""

from __future__ import annotations

import torch
from torch import nn

# Activations by name, as configs choose them. "hardswish" is x * relu6(x + 3) / 6: swish's shape without
# its exponential, safer in low precision (see fxrec.lowp.mods).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "hardswish": nn.Hardswish,
}


class MLP(nn.Module):
    """Linear -> activation (-> dropout) per hidden layer; the last layer can stay linear.

    Example::

        mlp = MLP(32, [64, 16])
        mlp(torch.randn(8, 32)).shape  # (8, 16)
    """

    def __init__(
        self,
        in_features: int,
        layer_sizes: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        activate_last: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for i, size in enumerate(layer_sizes):
            layers.append(nn.Linear(width, size))
            if activate_last or i < len(layer_sizes) - 1:
                layers.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            width = size
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
