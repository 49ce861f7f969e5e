"""Multi-task heads: the over-arch that turns one representation (B, F) into a logit per task.

- "shared_bottom": every task has its own tower on the same input (optionally after a shared bottom MLP);
- "mmoe" (Ma et al., 2018): `num_experts` expert MLPs shared by all tasks; each task mixes them with its
  own softmax gate over the input, then runs its own tower.

Loss weights per task belong to the trainer; heads only expose `tasks`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fxrec.nn.mlp import MLP

# Each kind, with the constructor arguments only it reads (a config block of another kind rejects them).
HEAD_KINDS: dict[str, tuple[str, ...]] = {"shared_bottom": ("bottom_hidden",), "mmoe": ("num_experts", "expert_hidden")}


def _tower(in_features: int, hidden: list[int], activation: str, dropout: float) -> nn.Sequential:
    body = MLP(in_features, hidden, activation=activation, dropout=dropout)
    return nn.Sequential(body, nn.Linear(body.out_features, 1))


class TaskHeads(nn.Module):
    """x (B, F) -> {task: logits (B,)}.

    Example::

        heads = TaskHeads(32, ["click", "conversion"], kind="mmoe", hidden=[16], num_experts=4)
        out = heads(torch.randn(8, 32))
        out["click"].shape  # (8,)
    """

    def __init__(
        self,
        in_features: int,
        tasks: list[str],
        kind: str = "shared_bottom",
        hidden: list[int] | None = None,
        num_experts: int = 4,
        expert_hidden: list[int] | None = None,
        bottom_hidden: list[int] | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"TaskHeads needs a non-empty list of distinct task names, got {tasks!r}")
        if kind not in HEAD_KINDS:
            raise ValueError(f"TaskHeads kind must be one of {list(HEAD_KINDS)}, got {kind!r}")
        self.tasks = list(tasks)
        self.kind = kind
        hidden = list(hidden) if hidden is not None else [64]
        self.bottom: MLP | None = None
        self.experts: nn.ModuleList | None = None
        self.gates: nn.ModuleDict | None = None
        width = in_features
        if kind == "shared_bottom" and bottom_hidden:
            self.bottom = MLP(in_features, list(bottom_hidden), activation=activation, dropout=dropout)
            width = self.bottom.out_features
        if kind == "mmoe":
            if num_experts < 1:
                raise ValueError(f"MMoE needs num_experts >= 1, got {num_experts}")
            sizes = list(expert_hidden) if expert_hidden is not None else [64]
            self.experts = nn.ModuleList(
                MLP(in_features, sizes, activation=activation, dropout=dropout) for _ in range(num_experts)
            )
            self.gates = nn.ModuleDict({task: nn.Linear(in_features, num_experts) for task in self.tasks})
            width = sizes[-1]
        self.towers = nn.ModuleDict({task: _tower(width, hidden, activation, dropout) for task in self.tasks})

    def output_layers(self) -> dict[str, nn.Linear]:
        """{task: the Linear that outputs its logit}: the last layer of its tower, whose bias `init_bias` sets."""
        return {task: tower[-1] for task, tower in self.towers.items()}

    @torch.no_grad()
    def init_bias(self, base_rates: dict[str, float]) -> None:
        """Start each task's logit at its base rate: rare labels (0.4% clicks) otherwise need many
        steps just to move the output from p = 0.5, and early predictions are badly calibrated."""
        for task, rate in base_rates.items():
            rate = min(max(rate, 1e-4), 1 - 1e-4)
            self.towers[task][-1].bias.fill_(math.log(rate / (1 - rate)))

    def gate_weights(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """MMoE only: {task: (B, num_experts)} softmax mixture weights."""
        if self.gates is None:
            raise ValueError("gate_weights is only defined for kind='mmoe'")
        return {task: gate(x).softmax(-1) for task, gate in self.gates.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.experts is None:
            shared = self.bottom(x) if self.bottom is not None else x
            return {task: tower(shared).squeeze(-1) for task, tower in self.towers.items()}
        expert_out = torch.stack([expert(x) for expert in self.experts], dim=1)  # (B, E, H)
        weights = self.gate_weights(x)
        return {
            task: tower(torch.einsum("be,beh->bh", weights[task], expert_out)).squeeze(-1)
            for task, tower in self.towers.items()
        }
