"""The fast CPU path for GDPA.

Why: the score tensor act(q k^T) is (sum_len, H, T) — with T = the FFN hidden size (256) it is
T/D times larger than q itself, and autograd would keep both the scores and their activation. The
hand-written autograd.Function below keeps only q, k, v and recomputes the scores per chunk in
backward; queries are grouped into length buckets (linear cost, so only a handful) and padded within a
bucket so each chunk is two batched matmuls over (n, H, L, D) x (n, H, D, T).
"""

from __future__ import annotations

from typing import Any

import torch

from fxrec.ops._jagged import Chunk, JaggedPlan
from fxrec.ops.gdpa_kernels.reference import activate, window_mask


def _activation_backward(grad: torch.Tensor, scores: torch.Tensor, activation: str) -> torch.Tensor:
    """grad * act'(scores), with ATen's fused backward kernels where there is one (one pass, no temporaries)."""
    if activation == "relu":
        return torch.ops.aten.threshold_backward(grad, scores, 0.0)
    if activation == "silu":
        return torch.ops.aten.silu_backward(grad, scores)
    if activation == "gelu":
        return torch.ops.aten.gelu_backward(grad, scores)
    if activation == "relu2":
        return grad * scores.clamp(min=0).mul_(2)
    if activation == "raw":
        return grad
    raise ValueError(f"unknown GDPA activation {activation!r}")


def _window(length: int, keys: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    return None if window is None else window_mask(length, keys, window, device)


class _JaggedGDPA(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        chunks: list[Chunk],
        activation: str,
        scale: float,
        window: int | None,
    ) -> torch.Tensor:
        out = q.new_zeros(q.shape[0], q.shape[1], v.shape[3])
        k_heads, v_heads = k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        for chunk in chunks:
            q_block = chunk.gather(q)  # (n, H, L, D)
            scores = q_block @ k_heads.index_select(0, chunk.seq_ids).transpose(-1, -2)  # (n, H, L, T)
            weights = activate(scores, activation)
            mask = _window(chunk.padded_len, k.shape[1], window, q.device)
            if mask is not None:
                weights = weights * mask
            chunk.scatter_(out, (weights @ v_heads.index_select(0, chunk.seq_ids)).mul_(scale))
        ctx.save_for_backward(q, k, v)
        ctx.chunks, ctx.activation, ctx.scale, ctx.window = chunks, activation, scale, window
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dq = torch.zeros_like(q)
        dk_heads = torch.zeros_like(k).transpose(1, 2)  # (B, H, T, D) view, so results land in (B, T, H, D)
        dv_heads = torch.zeros_like(v).transpose(1, 2)
        k_heads, v_heads = k.transpose(1, 2), v.transpose(1, 2)
        for chunk in ctx.chunks:
            q_block = chunk.gather(q)
            k_block = k_heads.index_select(0, chunk.seq_ids)
            v_block = v_heads.index_select(0, chunk.seq_ids)
            do_block = chunk.gather_zero_padded(grad_out) * ctx.scale
            scores = q_block @ k_block.transpose(-1, -2)  # (n, H, L, T), recomputed rather than saved
            weights = activate(scores, ctx.activation)
            d_weights = do_block @ v_block.transpose(-1, -2)
            mask = _window(chunk.padded_len, k.shape[1], ctx.window, q.device)
            if mask is not None:
                weights, d_weights = weights * mask, d_weights * mask
            dv_heads.index_add_(0, chunk.seq_ids, weights.transpose(-1, -2) @ do_block)
            d_scores = _activation_backward(d_weights, scores, ctx.activation)
            chunk.scatter_(dq, d_scores @ k_block)
            dk_heads.index_add_(0, chunk.seq_ids, d_scores.transpose(-1, -2) @ q_block)
        return dq, dk_heads.transpose(1, 2), dv_heads.transpose(1, 2), None, None, None, None


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
    """q (sum_len, H, D), k (B, T, H, D), v (B, T, H, Dv) -> (sum_len, H, Dv); see `fxrec.ops.gdpa`."""
    # bound the (n, H, L, T) score chunk, the largest temporary, rather than the (n, H, L, D) inputs:
    # 1/8 of the whole score tensor (1-8 MiB) keeps the ~4 live score-sized temporaries of the backward
    # small next to the jagged tensors while the batched matmuls stay large
    row_bytes = q.shape[1] * max(k.shape[1], q.shape[2]) * 4
    chunk_bytes = min(8 << 20, max(1 << 20, q.shape[0] * row_bytes // 8))
    chunks = plan.chunks(quadratic=False, row_bytes=row_bytes, call_overhead=64.0 * k.shape[1],
                         chunk_bytes=chunk_bytes)
    return _JaggedGDPA.apply(q, k, v, chunks, activation, scale, window)
