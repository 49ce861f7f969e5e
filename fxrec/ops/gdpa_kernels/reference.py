"""GDPA written as padded einsums with masks: slow, obviously right, the test oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fxrec.ops._jagged import JaggedPlan


def activate(scores: torch.Tensor, activation: str) -> torch.Tensor:
    """The score activation; gelu is the exact (erf) form. Every one maps 0 to 0."""
    if activation == "gelu":
        return F.gelu(scores)
    if activation == "silu":
        return F.silu(scores)
    if activation == "relu":
        return F.relu(scores)
    if activation == "relu2":
        return F.relu(scores).square()
    if activation == "raw":
        return scores
    raise ValueError(f"unknown GDPA activation {activation!r}")


def window_mask(query_len: int, key_len: int, window: int | None, device: torch.device) -> torch.Tensor:
    """(query_len, key_len) bool, True where |i - j| <= window (all True without a window)."""
    i = torch.arange(query_len, device=device)[:, None]
    j = torch.arange(key_len, device=device)[None, :]
    if window is None:
        return torch.ones(query_len, key_len, dtype=torch.bool, device=device)
    return (i - j).abs() <= window


def gdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: JaggedPlan,
    max_len: int,
    activation: str,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """q (sum_len, H, D), k (B, T, H, D), v (B, T, H, Dv) -> (sum_len, H, Dv): scale * act(q k^T) v."""
    offsets, batch, lengths = plan.offsets, plan.batch_size, plan.lengths
    padded_len = int(lengths.max()) if batch > 0 and q.shape[0] > 0 else 0
    positions = torch.arange(padded_len, device=q.device)
    valid = positions[None, :] < lengths[:, None]  # (B, L)
    rows = (offsets[:-1, None] + positions[None, :])[valid]
    padded = q.new_zeros(batch, padded_len, q.shape[1], q.shape[2]).float()
    padded = padded.index_put((valid.nonzero()[:, 0], valid.nonzero()[:, 1]), q[rows].float())
    scores = torch.einsum("blhd,bthd->bhlt", padded, k.float())
    weights = activate(scores, activation) * scale
    allowed = window_mask(padded_len, k.shape[1], window, q.device)
    weights = weights * allowed
    out = torch.einsum("bhlt,bthd->blhd", weights, v.float())
    return out[valid].to(q.dtype)
