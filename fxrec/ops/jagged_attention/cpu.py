"""The fast CPU path for jagged attention.

Why this shape:
- Padding a ragged batch to max_len wastes (1 - mean/max) of the rows and (1 - E[len^2]/max^2) of the
  score work. Sequences are grouped into a few length buckets (`plan_chunks`) and each bucket is padded
  only to its own longest member, so one batched kernel call per bucket keeps the matmuls large.
- The kernel is PyTorch's CPU flash attention (`_scaled_dot_product_flash_attention_for_cpu`): it tiles
  over key blocks with an online softmax and returns the log-sum-exp, so no full score matrix is ever
  materialised, and its backward recomputes scores block by block.
- A hand-written autograd.Function saves only the jagged q, k, v, output and the per-bucket
  log-sum-exp. Padded copies live for one chunk at a time in forward and are rebuilt in backward, so
  peak memory scales with the jagged size, not with B * max_len.
- A batch of equal lengths becomes a single contiguous chunk: a strided view, no gather, no mask — the
  same kernel dense SDPA would run, minus the padding copies.
"""

from __future__ import annotations

from typing import Any

import torch

from fxrec.ops._jagged import Chunk, plan_chunks

_flash_forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _self_mask(chunk: Chunk, causal: bool, window: int | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive mask for one self-attention chunk: (n | 1, 1, L | 1, L) or None.

    Causal attention needs no key-padding mask: real query i only sees keys j <= i < length.
    """
    length, device = chunk.padded_len, chunk.rows.device
    mask = None
    if window is not None:
        i = torch.arange(length, device=device)[:, None]
        j = torch.arange(length, device=device)[None, :]
        allowed = (i - j).abs() <= window
        if causal:
            allowed &= j <= i
        mask = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        mask = mask[None, None]
    if chunk.valid is not None and not causal:
        key_padding = torch.zeros(chunk.valid.shape, dtype=dtype, device=device).masked_fill(~chunk.valid, float("-inf"))
        key_padding = key_padding[:, None, None, :]
        mask = key_padding if mask is None else mask + key_padding
    return mask


def _key_padding_mask(chunk: Chunk, dtype: torch.dtype) -> torch.Tensor | None:
    if chunk.valid is None:
        return None
    mask = torch.zeros(chunk.valid.shape, dtype=dtype, device=chunk.rows.device)
    return mask.masked_fill(~chunk.valid, float("-inf"))[:, None, None, :]


class _JaggedFlashAttention(torch.autograd.Function):
    """Bucketed flash attention with the padded temporaries dropped between chunks (see module doc)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        chunks: list[Chunk],
        dense_queries: int,
        causal: bool,
        scale: float,
        out_scale: float,
        window: int | None,
    ) -> torch.Tensor:
        out = q.new_zeros(q.shape[0], q.shape[1], v.shape[2])
        lses, masks = [], []
        for chunk in chunks:
            q_block = _query_block(q, chunk, dense_queries)
            mask = _self_mask(chunk, causal, window, q.dtype) if not dense_queries else _key_padding_mask(chunk, q.dtype)
            o, lse = _flash_forward(
                q_block, chunk.gather(k), chunk.gather(v), 0.0, causal, attn_mask=mask, scale=scale
            )
            _scatter_queries(out, o, chunk, dense_queries)
            lses.append(lse)
            masks.append(mask)
        if out_scale != 1.0:
            out.mul_(out_scale)
        ctx.save_for_backward(q, k, v, out)
        ctx.chunks, ctx.lses, ctx.masks = chunks, lses, masks
        ctx.dense_queries, ctx.causal, ctx.scale, ctx.out_scale = dense_queries, causal, scale, out_scale
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dense_queries, out_scale = ctx.dense_queries, ctx.out_scale
        for chunk, lse, mask in zip(ctx.chunks, ctx.lses, ctx.masks, strict=True):
            # the kernel only uses `out` for rowsum(dO * O); undo out_scale on O and move it onto dO
            o_block = _query_block(out, chunk, dense_queries)
            do_block = _query_block(grad_out, chunk, dense_queries, zero_padding=True)
            if out_scale != 1.0:
                o_block, do_block = o_block / out_scale, do_block * out_scale
            gq, gk, gv = _flash_backward(
                do_block,
                _query_block(q, chunk, dense_queries),
                chunk.gather(k),
                chunk.gather(v),
                o_block,
                lse,
                0.0,
                ctx.causal,
                attn_mask=mask,
                scale=ctx.scale,
            )
            _scatter_queries(dq, gq, chunk, dense_queries)
            chunk.scatter_(dk, gk)
            chunk.scatter_(dv, gv)
        return dq, dk, dv, None, None, None, None, None, None


def _query_block(values: torch.Tensor, chunk: Chunk, dense_queries: int, zero_padding: bool = False) -> torch.Tensor:
    """Queries of one chunk as (n, H, Lq, D): jagged rows for self-attention, or dense rows for T queries."""
    if not dense_queries:
        return chunk.gather_zero_padded(values) if zero_padding else chunk.gather(values)
    rows = values.view(-1, dense_queries, values.shape[1], values.shape[2])  # (B, T, H, D)
    return rows.index_select(0, chunk.seq_ids).transpose(1, 2)


def _scatter_queries(target: torch.Tensor, block: torch.Tensor, chunk: Chunk, dense_queries: int) -> None:
    if not dense_queries:
        chunk.scatter_(target, block)
        return
    dense = target.view(-1, dense_queries, target.shape[1], target.shape[2])
    dense.index_copy_(0, chunk.seq_ids, block.transpose(1, 2).to(target.dtype))


def self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    max_len: int,
    causal: bool,
    scale: float,
    out_scale: float,
    window: int | None,
) -> torch.Tensor:
    """q, k (sum_len, H, D), v (sum_len, H, Dv) -> (sum_len, H, Dv); see `fxrec.ops.jagged_self_attention`."""
    row_bytes = q.shape[1] * max(q.shape[2], v.shape[2]) * q.element_size()
    chunks = plan_chunks(offsets, quadratic=True, row_bytes=row_bytes)
    return _JaggedFlashAttention.apply(q, k, v, chunks, 0, causal, scale, out_scale, window)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    max_len: int,
    scale: float,
    out_scale: float,
) -> torch.Tensor:
    """q (B, T, H, D) over jagged k (sum_len, H, D), v (sum_len, H, Dv) -> (B, T, H, Dv)."""
    batch, num_queries, heads, _ = q.shape
    row_bytes = heads * max(q.shape[3], v.shape[2]) * q.element_size()
    chunks = plan_chunks(offsets, quadratic=False, row_bytes=row_bytes, call_overhead=float(16 * num_queries))
    flat_q = q.reshape(batch * num_queries, heads, q.shape[3])
    out = _JaggedFlashAttention.apply(flat_q, k, v, chunks, num_queries, False, scale, out_scale, None)
    return out.view(batch, num_queries, heads, v.shape[2])
