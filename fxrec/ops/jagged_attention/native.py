"""The native jagged attention kernel as an autograd op: C++ (`fxrec/ops/native/jagged_attention.cpp`)
forward and backward over jagged rows in place, fp32 inside (other dtypes are converted at the edges)."""

from __future__ import annotations

from typing import Any

import torch


class NativeAttention(torch.autograd.Function):
    """Softmax attention of jagged queries over jagged keys. Queries have their own offsets: the keys'
    offsets for self-attention, T rows per example for dense queries. The forward keeps q, k, v, the
    output and the per-row log-sum-exp; the backward recomputes the scores."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_offsets: torch.Tensor,
        k_offsets: torch.Tensor,
        causal: bool,
        window: int | None,
        scale: float,
        out_scale: float,
    ) -> torch.Tensor:
        dtype = q.dtype
        q, k, v = (t.float().contiguous() for t in (q, k, v))
        window = -1 if window is None else window
        out, lse = torch.ops.fxrec_native.jagged_attention_forward(q, k, v, q_offsets, k_offsets, causal, window, scale)
        ctx.save_for_backward(q, k, v, out, lse, q_offsets, k_offsets)
        ctx.causal, ctx.window, ctx.scale, ctx.out_scale, ctx.dtype = causal, window, scale, out_scale, dtype
        if out_scale != 1.0:
            return (out * out_scale).to(dtype)
        return out.to(dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse, q_offsets, k_offsets = ctx.saved_tensors
        grad = grad_out.float().contiguous()
        if ctx.out_scale != 1.0:
            grad = grad * ctx.out_scale
        dq, dk, dv = torch.ops.fxrec_native.jagged_attention_backward(
            grad, q, k, v, out, lse, q_offsets, k_offsets, ctx.causal, ctx.window, ctx.scale
        )
        dtype = ctx.dtype
        return dq.to(dtype), dk.to(dtype), dv.to(dtype), None, None, None, None, None, None
