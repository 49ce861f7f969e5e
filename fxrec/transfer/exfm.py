"""ExFM: external distillation through an auxiliary head, with an optional student adapter.

The VM keeps its serving head on true labels only; an auxiliary head on the same trunk output learns
the FM's predictions, so FM bias reaches serving only through the shared trunk:

    L = BCE(y_serve, y) + w * BCE(y_aux, min(alpha * sigmoid(y_fm), 1))  [+ w * BCE(y_aux2, SG(sigmoid(SA(y_fm))))]

Three amplifiers for long-tailed ad labels (FM predictions sit near 0): gradient scaling beta of the
auxiliary loss into the trunk (identity forward, beta * grad backward), label scaling alpha with
clipping at 1, and the loss weight w.

The student adapter SA is a small MLP on the FM logit, trained on fresh labels only; it learns how
a (possibly stale) FM maps to today's click rates. Each batch: first update SA on the labels, then
use its stop-gradient output as a second distillation target for the VM (ExFM Algorithm 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fxrec.data.batches import Batch, EventFrame
from fxrec.models.heads import TaskHeads
from fxrec.nn.mlp import MLP
from fxrec.transfer.base import FM_LOGITS, TransferChannel, attach_logits, fm_targets, soft_bce


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float) -> torch.Tensor:  # type: ignore[override]
        ctx.beta = beta
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.beta, None


def scale_gradient(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient flowing back through it by beta."""
    return x if beta == 1.0 else _ScaleGradient.apply(x, beta)


class StudentAdapter(nn.Module):
    """FM logit (B,) -> adapted logit (B,), per task; starts as the identity map."""

    def __init__(self, tasks: list[str], hidden: int = 16):
        super().__init__()
        self.mlps = nn.ModuleDict({t: MLP(1, [hidden]) for t in tasks})
        self.outs = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in tasks})
        self.skip = nn.ParameterDict({t: nn.Parameter(torch.ones(1)) for t in tasks})
        for out in self.outs.values():
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, task: str, fm_logits: torch.Tensor) -> torch.Tensor:
        x = fm_logits.unsqueeze(1)
        return (self.skip[task] * x + self.outs[task](self.mlps[task](x))).squeeze(1)


class ExFM(TransferChannel):
    """Auxiliary head (+ student adapter). Constructor keys map 1:1 to the YAML channel entry."""

    name = "exfm"
    input_key = FM_LOGITS

    def __init__(
        self,
        dim: int,
        tasks: list[str],
        weight: float = 1.0,
        beta: float = 1.0,
        alpha: float = 1.0,
        adapter: bool = False,
        adapter_lr: float = 1e-2,
        hidden: list[int] | None = None,
    ):
        super().__init__(dim, tasks)
        self.weight, self.beta, self.alpha = weight, beta, alpha
        self.hidden = list(hidden) if hidden is not None else [64]
        self.adapter = StudentAdapter(self.tasks) if adapter else None
        self._adapter_optimizer = (
            torch.optim.Adam(self.adapter.parameters(), lr=adapter_lr) if self.adapter is not None else None
        )
        self.aux_head: TaskHeads | None = None
        self.adapter_head: TaskHeads | None = None

    def build(self, top_features: int) -> None:
        self.aux_head = TaskHeads(top_features, self.tasks, hidden=self.hidden)
        if self.adapter is not None:
            self.adapter_head = TaskHeads(top_features, self.tasks, hidden=self.hidden)

    def init_bias(self, base_rates: dict[str, float]) -> None:
        for head in (self.aux_head, self.adapter_head):
            if head is not None:
                head.init_bias({t: min(self.alpha * r, 1.0) for t, r in base_rates.items()})

    def attach(self, frame: EventFrame, published) -> None:
        attach_logits(frame, published, self.tasks)

    def own_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters()) if self.adapter is not None else []

    def before_step(self, batch: Batch) -> None:
        if self.adapter is None or self._adapter_optimizer is None:
            return
        self.adapter.train()
        self._adapter_optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        for task in self.tasks:
            fm_logits, found = fm_targets(batch, task)
            per_row = F.binary_cross_entropy_with_logits(self.adapter(task, fm_logits), batch.labels[task], reduction="none")
            loss = loss + (per_row * found).sum() / found.sum().clamp_min(1.0)
        loss.backward()
        self._adapter_optimizer.step()

    def loss(self, output, batch: Batch) -> torch.Tensor:
        assert self.aux_head is not None, "ExFM.build() was not called"
        trunk = scale_gradient(output.representations["top"], self.beta)
        aux = self.aux_head(trunk)
        adapted = self.adapter_head(trunk) if self.adapter_head is not None else None
        total = torch.zeros(())
        for task in self.tasks:
            fm_logits, found = fm_targets(batch, task)
            target = (self.alpha * torch.sigmoid(fm_logits)).clamp(max=1.0)
            total = total + soft_bce(aux[task], target, found)
            if adapted is not None and self.adapter is not None:
                with torch.no_grad():
                    adapter_target = torch.sigmoid(self.adapter(task, fm_logits))
                total = total + soft_bce(adapted[task], adapter_target, found)
        return self.weight * total

    def optimizer_state(self) -> dict:
        return self._adapter_optimizer.state_dict() if self._adapter_optimizer is not None else {}

    def load_optimizer_state(self, state: dict) -> None:
        if self._adapter_optimizer is not None and state:
            self._adapter_optimizer.load_state_dict(state)
