"""The fast CPU path for GDPA.

With a C++ compiler on the machine, every call goes to the native kernel (`fxrec/ops/native/gdpa.cpp`,
wrapped in `native.py`): it reads the jagged query rows in place, a block of one example's queries at a
time against that example's keys, with no padding, gathers or scatters. Without a compiler, the
bucketed path below runs.

The bucketed path, and why: the score tensor act(q k^T) is (sum_len, H, T) — with T = the FFN hidden size (256) it is
T/D times larger than q itself, and autograd would keep both the scores and their activation. The
hand-written autograd.Function below keeps only q, k, v and recomputes the scores per chunk in
backward; queries are grouped into length buckets (linear cost, so only a handful) and padded within a
bucket so each chunk is two batched matmuls over (n, H, L, D) x (n, H, D, T).
"""

from __future__ import annotations

from typing import Any

import torch

from fxrec.ops import native
from fxrec.ops._jagged import Chunk, JaggedPlan
from fxrec.ops.gdpa_kernels.native import NativeGDPA
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
        empty_examples: torch.Tensor,
    ) -> torch.Tensor:
        out = q.new_empty(q.shape[0], q.shape[1], v.shape[3])  # every row belongs to exactly one chunk
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
        ctx.empty_examples = empty_examples
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        # every row / example of a chunk is written exactly once, so no buffer is zero-filled: dq has a
        # spare row that takes the padding, and only examples in no chunk (empty histories) get zeros
        dq = torch.empty(q.shape[0] + 1, *q.shape[1:], dtype=q.dtype, device=q.device)
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        dk_heads, dv_heads = dk.transpose(1, 2), dv.transpose(1, 2)  # (B, H, T, D) views of (B, T, H, D)
        k_heads, v_heads = k.transpose(1, 2), v.transpose(1, 2)
        for chunk in ctx.chunks:
            q_block = chunk.gather(q)
            k_block = k_heads.index_select(0, chunk.seq_ids)
            v_block = v_heads.index_select(0, chunk.seq_ids)
            do_block = chunk.gather_zero_padded(grad_out) * ctx.scale  # may be a view of grad_out: no mul_
            scores = q_block @ k_block.transpose(-1, -2)  # (n, H, L, T), recomputed rather than saved
            weights = activate(scores, ctx.activation)
            d_weights = do_block @ v_block.transpose(-1, -2)
            mask = _window(chunk.padded_len, k.shape[1], ctx.window, q.device)
            if mask is not None:
                weights, d_weights = weights * mask, d_weights * mask
            dv_heads.index_copy_(0, chunk.seq_ids, weights.transpose(-1, -2) @ do_block)
            del weights
            d_scores = _activation_backward(d_weights, scores, ctx.activation)
            del scores, d_weights
            chunk.scatter_spare_(dq, d_scores @ k_block)
            dk_heads.index_copy_(0, chunk.seq_ids, d_scores.transpose(-1, -2) @ q_block)
        if ctx.empty_examples.numel():
            dk.index_fill_(0, ctx.empty_examples, 0)
            dv.index_fill_(0, ctx.empty_examples, 0)
        return dq[: q.shape[0]], dk, dv, None, None, None, None, None


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
    if native.load():
        return NativeGDPA.apply(q, k, v, plan.offsets, activation, scale, window)
    # bound the (n, H, L, T) score chunk, the largest temporary, rather than the (n, H, L, D) inputs:
    # 1/8 of the whole score tensor (1-8 MiB) keeps the ~4 live score-sized temporaries of the backward
    # small next to the jagged tensors while the batched matmuls stay large
    heads, keys = q.shape[1], k.shape[1]
    row_bytes = heads * max(keys, q.shape[2]) * 4
    chunk_bytes = min(8 << 20, max(1 << 20, q.shape[0] * row_bytes // 8))
    # each sequence of a chunk also gathers its example's keys and values (T rows each): for short
    # sequences these, not the scores, are the big temporaries
    sequence_bytes = keys * heads * (k.shape[3] + v.shape[3]) * 4
    chunks = plan.chunks(
        quadratic=False,
        row_bytes=row_bytes,
        call_overhead=_call_overhead(heads, q.shape[2], keys),
        chunk_bytes=chunk_bytes,
        sequence_bytes=sequence_bytes,
    )
    empty_examples = torch.nonzero(plan.lengths == 0).flatten()
    return _JaggedGDPA.apply(q, k, v, chunks, activation, scale, window, empty_examples)


def _call_overhead(heads: int, dim: int, keys: int) -> float:
    """The fixed cost of one more length bucket (~20 small ops, ~0.1 ms) in the planner's unit for linear
    ops, padded query rows: one row costs ~7 (H, D) x (D, T)-sized matmul rows forward + backward, so a
    bucket is worth CALL_OVERHEAD_FLOPS / (H * D * T) rows (32 rows at H=1, D=64, T=256)."""
    return max(4.0, CALL_OVERHEAD_FLOPS / (heads * dim * keys))


CALL_OVERHEAD_FLOPS = float(1 << 19)
