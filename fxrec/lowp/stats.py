"""Running statistics of a Linear's inputs and a summary of its weight, as the probe keeps them.

`RunningMoments` holds the mean and the scatter matrix of a layer's input features and folds in one batch
at a time with the batched Welford (Chan) merge: for a batch of B rows with mean mu_b and scatter S_b,

    n' = n + B,   delta = mu_b - mu,   mu' = mu + (B / n') delta,   S' = S + S_b + (n B / n') delta delta^T

Rows are treated as independent draws of one F-dimensional Gaussian, so storage is O(F^2) whatever the
batch size; leading dimensions ((B, F), (B, n, F), ...) are flattened into rows. The sums are kept in
float64 on the layer's device (the merge subtracts nearby numbers); `mean` and `covariance` come out as
float32. `sample` draws rows from N(mean, covariance), the distribution the offline error estimate uses.

`WeightStats` is a read of the weight as it stands: shape, absmax, std, how unevenly the rows' absmax
spread (what rowwise scaling buys over tensorwise) and the bias norm (a bias that keeps growing is one of
LoKA's warning signs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


class RunningMoments:
    """Mean and covariance of F features over every row seen so far (batched Welford / Chan merge)."""

    def __init__(self, features: int, device: torch.device | str | None = None) -> None:
        self.features = features
        self.count = 0
        self._mean = torch.zeros(features, dtype=torch.float64, device=device)
        self._scatter = torch.zeros(features, features, dtype=torch.float64, device=device)
        self._absmax = torch.zeros(features, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold in a batch shaped (..., F): every leading index is one row."""
        rows = x.detach().reshape(-1, self.features).to(device=self._mean.device, dtype=torch.float64)
        b = rows.shape[0]
        if b == 0:
            return
        mean_b = rows.mean(dim=0)
        centred = rows - mean_b
        self._merge(b, mean_b, centred.T @ centred)
        self._absmax = torch.maximum(self._absmax, rows.abs().amax(dim=0))

    def merge(self, other: RunningMoments) -> None:
        """Fold in another accumulator's rows (e.g. from another worker), as if they were one batch."""
        if other.features != self.features:
            raise ValueError(f"cannot merge {other.features} features into {self.features}")
        if other.count == 0:
            return
        device = self._mean.device
        self._merge(other.count, other._mean.to(device), other._scatter.to(device))
        self._absmax = torch.maximum(self._absmax, other._absmax.to(device))

    def _merge(self, b: int, mean_b: torch.Tensor, scatter_b: torch.Tensor) -> None:
        n = self.count
        total = n + b
        delta = mean_b - self._mean
        self._mean += delta * (b / total)
        self._scatter += scatter_b + torch.outer(delta, delta) * (n * b / total)
        self.count = total

    @property
    def mean(self) -> torch.Tensor:
        return self._mean.float()

    @property
    def absmax(self) -> torch.Tensor:
        """Per-feature largest |x| seen (the Gaussian does not carry the tails; this does)."""
        return self._absmax.float()

    def covariance(self, ddof: int = 1) -> torch.Tensor:
        """Scatter / (count - ddof), numpy's `np.cov(rows, rowvar=False)` for ddof=1; zeros until
        more than `ddof` rows have been seen (a single row has no spread)."""
        return self._covariance64(ddof).float()

    def _covariance64(self, ddof: int = 1) -> torch.Tensor:
        if self.count <= ddof:
            return torch.zeros_like(self._scatter)
        return self._scatter / (self.count - ddof)

    def sample(self, rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`rows` float32 draws of N(mean, covariance) on the accumulator's device: x = mean + z L^T,
        L the Cholesky factor of the covariance plus the smallest jitter (1e-8 of the mean variance,
        growing tenfold) that makes it positive definite: constant or collinear features are common
        (a ReLU that never fires, one-hot blocks)."""
        cov = self._covariance64().cpu()
        factor = cholesky_with_jitter(cov)
        z = torch.randn(rows, self.features, dtype=torch.float64, generator=generator)
        x = self._mean.cpu() + z @ factor.T
        return x.float().to(self._mean.device)

    def state_dict(self) -> dict[str, object]:
        return {"count": self.count, "mean": self._mean, "scatter": self._scatter, "absmax": self._absmax}


def cholesky_with_jitter(cov: torch.Tensor, start: float = 1e-8, tries: int = 12) -> torch.Tensor:
    """Lower Cholesky factor of `cov + jitter * I`, jitter the smallest of start, 10 start, ... (relative
    to the mean variance) that succeeds. A zero matrix (nothing seen, or one row) factors to zero."""
    n = cov.shape[0]
    scale = float(cov.diagonal().mean()) if n else 0.0
    if scale <= 0.0:
        return torch.zeros_like(cov)
    eye = torch.eye(n, dtype=cov.dtype, device=cov.device)
    jitters = [0.0] + [scale * start * 10**k for k in range(tries)]
    for jitter in jitters:
        factor, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if int(info) == 0:
            return factor
    raise ValueError(f"covariance is not positive semi-definite (jitter up to {jitters[-1]:.3g} failed)")


@dataclass(frozen=True)
class WeightStats:
    """A summary of one Linear's weight (out_features, in_features)."""

    out_features: int
    in_features: int
    absmax: float
    std: float
    row_absmax_spread: float  # max over rows of the row absmax / median row absmax (1 = even rows)
    bias_norm: float | None  # L2 norm of the bias; None for a Linear without one

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@torch.no_grad()
def weight_stats(linear: nn.Linear) -> WeightStats:
    w = linear.weight.detach().float()
    row_absmax = w.abs().amax(dim=1)
    median = float(row_absmax.median())
    spread = float(row_absmax.max()) / median if median > 0 else float("inf")
    bias = None if linear.bias is None else float(linear.bias.detach().float().norm())
    return WeightStats(
        out_features=w.shape[0],
        in_features=w.shape[1],
        absmax=float(w.abs().max()),
        std=float(w.std()) if w.numel() > 1 else 0.0,
        row_absmax_spread=spread,
        bias_norm=bias,
    )
