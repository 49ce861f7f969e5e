"""The contract every interaction module keeps."""

from __future__ import annotations

import torch
from torch import nn

from fxrec.nn.sequence import SequenceTokens


class Interaction(nn.Module):
    """Base class: `forward(tokens (B, n, d), sequence) -> (B, num_outputs, d)`.

    Modules that do not model sequences set `sequence_aware = False`; the model then pools the
    history into one extra token before calling them. Sequence-aware modules (InterFormer, Kunlun)
    receive the jagged `SequenceTokens` themselves.
    """

    sequence_aware: bool = False
    num_outputs: int

    def forward(self, tokens: torch.Tensor, sequence: SequenceTokens | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
