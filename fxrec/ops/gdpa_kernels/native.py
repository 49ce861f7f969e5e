"""The native GDPA kernel as an autograd op: C++ (`fxrec/ops/native/gdpa.cpp`) forward and backward over
the jagged query rows in place, fp32 inside (other dtypes are converted at the edges)."""

from __future__ import annotations

from typing import Any

import torch


class NativeGDPA(torch.autograd.Function):
    """scale * act(q k^T) v for jagged q over each example's T dense keys. The forward keeps only q, k and
    v; the backward recomputes the scores a block of queries at a time."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        offsets: torch.Tensor,
        activation: str,
        scale: float,
        window: int | None,
    ) -> torch.Tensor:
        dtype = q.dtype
        q, k, v = (t.float().contiguous() for t in (q, k, v))
        window = -1 if window is None else window
        out = torch.ops.fxrec_native.gdpa_forward(q, k, v, offsets, activation, scale, window)
        ctx.save_for_backward(q, k, v, offsets)
        ctx.activation, ctx.scale, ctx.window, ctx.dtype = activation, scale, window, dtype
        return out.to(dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, offsets = ctx.saved_tensors
        dq, dk, dv = torch.ops.fxrec_native.gdpa_backward(
            grad_out.float().contiguous(), q, k, v, offsets, ctx.activation, ctx.scale, ctx.window
        )
        dtype = ctx.dtype
        return dq.to(dtype), dk.to(dtype), dv.to(dtype), None, None, None, None
