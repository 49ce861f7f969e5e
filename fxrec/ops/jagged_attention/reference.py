"""Plain-PyTorch jagged attention, one sequence at a time: slow, obviously right, the test oracle."""

from __future__ import annotations

import torch

from fxrec.ops._jagged import JaggedPlan


def band_mask(query_len: int, key_len: int, causal: bool, window: int | None, device: torch.device) -> torch.Tensor:
    """(query_len, key_len) bool, True where query i may attend key j (positions within the sequence)."""
    i = torch.arange(query_len, device=device)[:, None]
    j = torch.arange(key_len, device=device)[None, :]
    allowed = torch.ones(query_len, key_len, dtype=torch.bool, device=device)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= (i - j).abs() <= window
    return allowed


def self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: JaggedPlan,
    max_len: int,
    causal: bool,
    scale: float,
    out_scale: float,
    window: int | None,
) -> torch.Tensor:
    """q, k (sum_len, H, D), v (sum_len, H, Dv) -> (sum_len, H, Dv): softmax(scale q k^T + mask) v * out_scale."""
    outputs = []
    bounds = plan.offsets.tolist()
    for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end == begin:
            continue
        qs, ks, vs = (t[begin:end].transpose(0, 1).float() for t in (q, k, v))  # (H, n, D)
        scores = scale * qs @ ks.transpose(1, 2)
        allowed = band_mask(end - begin, end - begin, causal, window, q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        outputs.append((torch.softmax(scores, dim=-1) @ vs * out_scale).transpose(0, 1))
    if not outputs:
        return q.new_zeros(0, q.shape[1], v.shape[2]) + 0 * (q.sum() + k.sum() + v.sum())
    return torch.cat(outputs).to(q.dtype)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: JaggedPlan,
    max_len: int,
    scale: float,
    out_scale: float,
) -> torch.Tensor:
    """Dense queries q (B, T, H, D) over jagged k (sum_len, H, D), v (sum_len, H, Dv) -> (B, T, H, Dv).

    An empty history gives a zero output (there is nothing to attend to).
    """
    outputs = []
    bounds = plan.offsets.tolist()
    for b, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if end == begin:
            outputs.append(q.new_zeros(q.shape[1], q.shape[2], v.shape[2]).float() + 0 * q[b].sum())
            continue
        qs = q[b].transpose(0, 1).float()  # (H, T, D)
        ks, vs = (t[begin:end].transpose(0, 1).float() for t in (k, v))
        weights = torch.softmax(scale * qs @ ks.transpose(1, 2), dim=-1)
        outputs.append((weights @ vs * out_scale).transpose(0, 1))
    if not outputs:
        return q.new_zeros(0, q.shape[1], q.shape[2], v.shape[2])
    return torch.stack(outputs).to(q.dtype)
