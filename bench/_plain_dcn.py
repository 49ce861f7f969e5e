"""The plain-PyTorch reference for bench/train_throughput.py: fxrec's DCNv2 ranking model, no framework.

nn.Embedding per sparse feature -> (B, n_s, d); a bottom MLP turns the dense features (after
sign(x)·log1p(|x|), as fxrec's DenseArch) into one more token; the low-rank cross x_{l+1} = x_0 * (U_l V_l x_l + b_l) + x_l runs on the flattened (B, n*d);
an MLP tower gives the click logit. The same shapes, widths and init as fxrec's RankingModel with
interaction dcnv2 (stacked) and shared_bottom heads; a reference for what a framework should cost,
not library code.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(in_features: int, sizes: list[int], activate_last: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, size in enumerate(sizes):
        layers.append(nn.Linear(in_features, size))
        if activate_last or i < len(sizes) - 1:
            layers.append(nn.ReLU())
        in_features = size
    return nn.Sequential(*layers)


class PlainDCN(nn.Module):
    """rows (B, n_s) int64 + dense (B, D) float32 -> click logits (B,).

    Example::

        model = PlainDCN([100, 10], num_dense=2, dim=16, dense_layers=[64], cross_layers=2, low_rank=32,
                         hidden=[128, 64])
        model(torch.randint(0, 10, (8, 2)), torch.randn(8, 2)).shape  # (8,)
    """

    def __init__(
        self,
        cardinalities: list[int],
        num_dense: int,
        dim: int,
        dense_layers: list[int],
        cross_layers: int,
        low_rank: int,
        hidden: list[int],
        sparse_gradients: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.embeddings = nn.ModuleList(nn.Embedding(c, dim, sparse=sparse_gradients) for c in cardinalities)
        with torch.no_grad():
            for table in self.embeddings:
                table.weight.uniform_(-0.05, 0.05)
                table.weight[0].zero_()
        self.bottom = _mlp(num_dense, [*dense_layers, dim])
        width = (len(cardinalities) + 1) * dim
        self.down = nn.ModuleList(nn.Linear(width, low_rank, bias=False) for _ in range(cross_layers))
        self.up = nn.ModuleList(nn.Linear(low_rank, width) for _ in range(cross_layers))
        self.tower = nn.Sequential(_mlp(width, hidden), nn.Linear(hidden[-1], 1))

    def forward(self, rows: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        tokens = [table(rows[:, i]) for i, table in enumerate(self.embeddings)]  # n_s x (B, d)
        tokens.append(self.bottom(torch.sign(dense) * torch.log1p(dense.abs())))  # as fxrec's DenseArch
        x0 = torch.cat(tokens, dim=1)  # (B, n*d)
        x = x0
        for down, up in zip(self.down, self.up, strict=True):
            x = x0 * up(down(x)) + x
        return self.tower(x).squeeze(-1)

    def optimizers(
        self, lr: float, fused: bool = False, table_lr: float | None = None
    ) -> list[torch.optim.Optimizer]:
        """Dense tables: Adam(lr) on everything (`fused`: one kernel for the whole update).

        Sparse tables (`sparse_gradients=True`, sparse COO gradients): AdaGrad(`table_lr`, eps 1e-8) on
        the rows a batch touched -- torch's element-wise AdaGrad, the closest built-in to FBGEMM's
        row-wise one (same rows, same step form w -= lr * g / (sqrt(G) + eps), but one accumulator
        per value instead of one per row) -- and Adam(lr, fused) on the dense part.
        """
        if not self.embeddings[0].sparse:
            return [torch.optim.Adam(self.parameters(), lr=lr, fused=fused)]
        table_params = list(self.embeddings.parameters())
        table_ids = {id(p) for p in table_params}
        dense_params = [p for p in self.parameters() if id(p) not in table_ids]
        return [
            torch.optim.Adam(dense_params, lr=lr, fused=fused),
            torch.optim.Adagrad(table_params, lr=table_lr if table_lr is not None else lr, eps=1e-8),
        ]
