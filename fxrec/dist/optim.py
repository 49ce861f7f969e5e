"""Row-wise AdaGrad for the tables of a sharded model: plain, and momentum-scaled for 2D.

`ReplicatedRowWiseAdagrad` updates the data-parallel (replicated) tables of a sharded model. A
replicated table is a plain parameter whose gradient DDP averages over the ranks; TorchRec stores a
group of such tables as one flat tensor (FBGEMM's dense TBE), rows of `dim` one after the other. This
applies FBGEMM's row-wise AdaGrad to it, row by row, after the average: v_row += mean(g_row^2),
w_row -= lr * g_row / (sqrt(v_row) + eps) -- the fused update one process runs inside backward. A row
the batch did not touch has a zero gradient, so neither its accumulator nor its weights move, as in the
sparse fused update.

The momentum-scaled row-wise AdaGrad of 2D sparse parallelism (Zhang et al., 2025): with M replica
groups each group's gradient comes from a batch M times smaller, noisier, so its accumulator grows
faster and shrinks the step; the fix divides the accumulator by c = M:

    v_row += mean(g_row^2);   w_row -= lr * g_row / (sqrt(v_row / c) + eps)

`accumulator_scale=c` gives it here. FBGEMM's fused kernel computes lr * g / (sqrt(v) + eps), and
lr*sqrt(c) * g / (sqrt(v) + eps*sqrt(c)) = lr * g / (sqrt(v/c) + eps) exactly, so the fused tables of a
2D run take `momentum_scaled(lr, eps, c)` as their learning rate and eps (`fxrec.dist.planning`).
"""

from __future__ import annotations

import math

import torch


def momentum_scaled(lr: float, eps: float, scale: float) -> tuple[float, float]:
    """(lr, eps) for FBGEMM's row-wise AdaGrad that make it the momentum-scaled one with c = `scale`."""
    root = math.sqrt(scale)
    return lr * root, eps * root


class ReplicatedRowWiseAdagrad(torch.optim.Optimizer):
    def __init__(
        self,
        params: list[torch.nn.Parameter],
        dim: int,
        lr: float,
        eps: float = 1e-8,
        accumulator_scale: float = 1.0,
    ):
        # No replicated table (nothing planned data-parallel): an optimizer of nothing.
        defaults = {"lr": lr, "eps": eps, "dim": dim, "accumulator_scale": accumulator_scale}
        super().__init__(params or [{"params": []}], defaults)
        for group in self.param_groups:
            for param in group["params"]:
                # Eager state, so a checkpoint taken before the first step has it too.
                self.state[param]["sum"] = torch.zeros(
                    param.numel() // dim, 1, dtype=torch.float32, device=param.device
                )

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            dim, lr, eps, scale = group["dim"], group["lr"], group["eps"], group["accumulator_scale"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad.view(-1, dim)
                total = self.state[param]["sum"]
                total += grad.pow(2).mean(dim=1, keepdim=True)
                denominator = (total / scale if scale != 1.0 else total).sqrt().add_(eps)
                param.view(-1, dim).addcdiv_(grad, denominator, value=-lr)


class MomentumScaledRowWiseAdagrad(ReplicatedRowWiseAdagrad):
    """Row-wise AdaGrad whose accumulator is divided by `replicas` (c = M, the 2D groups)."""

    def __init__(
        self, params: list[torch.nn.Parameter], dim: int, lr: float, replicas: int, eps: float = 1e-8
    ):
        super().__init__(params, dim, lr, eps, accumulator_scale=float(replicas))
