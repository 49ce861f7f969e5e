"""Row-wise AdaGrad for the data-parallel (replicated) tables of a sharded model.

A replicated table is a plain parameter whose gradient DDP averages over the ranks; TorchRec stores a
group of such tables as one flat tensor (FBGEMM's dense TBE), rows of `dim` one after the other. This
applies FBGEMM's row-wise AdaGrad to it, row by row, after the average: v_row += mean(g_row^2),
w_row -= lr * g_row / (sqrt(v_row) + eps) -- the fused update one process runs inside backward. A row
the batch did not touch has a zero gradient, so neither its accumulator nor its weights move, as in the
sparse fused update.
"""

from __future__ import annotations

import torch


class ReplicatedRowWiseAdagrad(torch.optim.Optimizer):
    def __init__(self, params: list[torch.nn.Parameter], dim: int, lr: float, eps: float = 1e-8):
        # No replicated table (nothing planned data-parallel): an optimizer of nothing.
        super().__init__(params or [{"params": []}], {"lr": lr, "eps": eps, "dim": dim})
        for group in self.param_groups:
            for param in group["params"]:
                # Eager state, so a checkpoint taken before the first step has it too.
                self.state[param]["sum"] = torch.zeros(
                    param.numel() // dim, 1, dtype=torch.float32, device=param.device
                )

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            dim, lr, eps = group["dim"], group["lr"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad.view(-1, dim)
                total = self.state[param]["sum"]
                total += grad.pow(2).mean(dim=1, keepdim=True)
                param.view(-1, dim).addcdiv_(grad, total.sqrt().add_(eps), value=-lr)
