"""BlockNorm: a parameter-free RMSNorm over fixed blocks of features (LoKA's normalization).

For x (..., N) and a block size k, features are cut into contiguous blocks [0, k), [k, 2k), ...; each
block b is divided by its own root mean square:

    y_b = x_b / sqrt(mean(x_b ** 2) + eps)

When k does not divide N, the last block holds the N mod k remaining features and is normalized over
its own (shorter) length; N < k is one block, a plain RMSNorm. The statistics are computed in float32
whatever the input's dtype (bf16/fp16 squares overflow or lose the small blocks), and the result is
cast back. A zero block stays zero. There are no parameters, so adding BlockNorm to a model adds no
state_dict entries; the block size is part of the model, and serving must use the one it trained with.

`BlockNormLinear` is an nn.Linear followed by BlockNorm of its output, the form LoKA fuses into the
GEMM's epilogue (`fxrec.lowp.mods` puts it in place of a model's Linear layers, keeping their weights).

Example::

    norm = BlockNorm(256)
    norm(torch.randn(8, 640)).shape  # (8, 640): blocks of 256, 256 and 128
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_BLOCK = 256
DEFAULT_EPS = 1e-6  # added to each block's mean square (float32), as RMSNorm's eps


def block_norm(x: torch.Tensor, block: int = DEFAULT_BLOCK, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """x (..., N) with each contiguous block of `block` features divided by its RMS (see the module doc)."""
    if block < 1:
        raise ValueError(f"BlockNorm needs block >= 1, got {block}")
    n = x.shape[-1]
    full = n // block * block
    xf = x.float()
    parts = []
    if full:
        head = xf[..., :full].unflatten(-1, (full // block, block))
        parts.append((head * torch.rsqrt(head.square().mean(-1, keepdim=True) + eps)).flatten(-2))
    if full < n:
        tail = xf[..., full:]
        parts.append(tail * torch.rsqrt(tail.square().mean(-1, keepdim=True) + eps))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return out.to(x.dtype)


class BlockNorm(nn.Module):
    """Parameter-free RMSNorm over contiguous blocks of `block` features (the last may be shorter)."""

    def __init__(self, block: int = DEFAULT_BLOCK, eps: float = DEFAULT_EPS):
        super().__init__()
        if block < 1:
            raise ValueError(f"BlockNorm needs block >= 1, got {block}")
        self.block = block
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_norm(x, self.block, self.eps)

    def extra_repr(self) -> str:
        return f"block={self.block}, eps={self.eps}"


class BlockNormLinear(nn.Linear):
    """BlockNorm(linear(x)): an existing nn.Linear whose output is block-normalized.

    It takes over `linear`'s weight and bias (the same Parameters: no new initialization, the same
    state_dict keys), so a model keeps its weights and its checkpoints' layout when its Linears are
    swapped for these. It is still an nn.Linear, so whatever hooks Linears (`fxrec.lowp.Probe`) sees it.
    """

    def __init__(self, linear: nn.Linear, block: int = DEFAULT_BLOCK, eps: float = DEFAULT_EPS):
        nn.Module.__init__(self)  # not nn.Linear's: its parameters are `linear`'s, already initialized
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.norm = BlockNorm(block, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))
