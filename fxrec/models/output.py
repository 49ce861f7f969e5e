"""ModelOutput: what every RankingModel returns, and what transfer channels' losses read."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    logits: dict[str, torch.Tensor]  # {task: (B,)}
    representations: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # {name: (B, ...)}: "top", FM "user", "tae"
