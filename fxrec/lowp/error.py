"""How far a format's GEMM output is from float32's: the mean element-wise relative error (MERE).

    MERE(y, ref) = mean_ij |y_ij - ref_ij| / (|ref_ij| + eps),   eps = eps_rel * rms(ref)

The plain |y - ref| / |ref| of LoKA's MERE is unbounded where an output happens to sit near zero (sums
that cancel), and its mean over a Gaussian output has no finite expectation. The floor eps, a fixed
fraction of the output's RMS, judges those elements against the layer's output scale instead, so the
number reads as "relative error of a typical output" and is stable from one draw to the next. With the
default eps_rel = 1e-2, outputs below 1% of the RMS count as being that large; a uniform relative error r
reads as about r, an error of r * rms(ref) everywhere as a few times r.
"""

from __future__ import annotations

import torch

EPS_REL = 1e-2


def relative_error(y: torch.Tensor, ref: torch.Tensor, eps_rel: float = EPS_REL) -> float:
    """MERE of `y` against `ref` (same shape), computed in float64."""
    y64, ref64 = y.double(), ref.double()
    rms = float(ref64.pow(2).mean().sqrt()) if ref64.numel() else 0.0
    eps = max(eps_rel * rms, torch.finfo(torch.float64).tiny)
    return float(((y64 - ref64).abs() / (ref64.abs() + eps)).mean())
