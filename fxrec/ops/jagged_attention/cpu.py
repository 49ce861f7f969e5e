"""The fast CPU path for jagged attention.

Why this shape:
- Padding a ragged batch to max_len wastes (1 - mean/max) of the rows and (1 - E[len^2]/max^2) of the
  score work. Sequences are grouped into a few length buckets (`JaggedPlan.chunks`) and each bucket is
  padded only to its own longest member, so one batched kernel call per bucket keeps the matmuls large.
- The kernel is PyTorch's CPU flash attention (`_scaled_dot_product_flash_attention_for_cpu`): it tiles
  over key blocks with an online softmax and returns the log-sum-exp, so no full score matrix is ever
  materialised, and its backward recomputes scores block by block.
- A hand-written autograd.Function saves only the jagged q, k, v, output and the per-bucket
  log-sum-exp. Padded copies live for one chunk at a time in forward and are rebuilt in backward, so
  peak memory scales with the jagged size, not with B * max_len.
- A batch of equal lengths becomes a single contiguous chunk: a strided view, no gather, no mask — the
  same kernel dense SDPA would run, minus the padding copies.
- Sliding-window attention does not pay for the whole (L x L) square: when a chunk is long next to the
  window, its queries are cut into blocks of `block` rows and each block attends only to the
  `block + 2 * window` keys around it (`_Band`), gathered straight from the jagged rows as overlapping
  bands. The flash kernel then runs over n * L / block short sequences: O(L * (block + 2w)) work, not
  O(L^2).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fxrec.ops._jagged import Chunk, JaggedPlan
from fxrec.ops.jagged_attention.reference import band_mask

_flash_forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool mask -> 0 where allowed, -inf elsewhere (the flash kernel's attn_mask)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


class _Padded:
    """One chunk as (n, H, L, D) blocks padded to its longest member: self-attention, or T dense queries
    per example (`dense_queries` = T) over the jagged keys."""

    def __init__(self, chunk: Chunk, dense_queries: int, causal: bool, window: int | None, dtype: torch.dtype):
        self.chunk, self.dense_queries, self.causal = chunk, dense_queries, causal
        key_padding = None if chunk.valid is None else _additive(chunk.valid, dtype)[:, None, None, :]
        # causal attention needs no key-padding mask: real query i only sees keys j <= i < length
        self.mask = None if causal else key_padding
        if window is not None:
            length = chunk.padded_len
            band = _additive(band_mask(length, length, causal, window, chunk.rows.device), dtype)[None, None]
            self.mask = band if self.mask is None else self.mask + band

    def queries(self, values: torch.Tensor, zero_padding: bool = False) -> torch.Tensor:
        """(n, H, Lq, D): jagged rows for self-attention, or the T dense rows of each example."""
        if not self.dense_queries:
            return self.chunk.gather_zero_padded(values) if zero_padding else self.chunk.gather(values)
        rows = values.view(-1, self.dense_queries, values.shape[1], values.shape[2])  # (B, T, H, D)
        return rows.index_select(0, self.chunk.seq_ids).transpose(1, 2)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        return self.chunk.gather(values)

    def scatter_queries_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        if not self.dense_queries:
            self.chunk.scatter_(target, block)
            return
        dense = target.view(-1, self.dense_queries, target.shape[1], target.shape[2])
        dense.index_copy_(0, self.chunk.seq_ids, block.transpose(1, 2).to(target.dtype))

    def add_keys_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        self.chunk.scatter_(target, block)  # chunks are disjoint and each key appears once in its chunk


class _Band:
    """One self-attention chunk as query blocks with their sliding-window key bands.

    Query block j of a sequence holds positions [j * block, (j + 1) * block); its band holds key positions
    [j * block - window, (j + 1) * block + window): every key any of its queries may see. Blocks and
    bands are gathered straight from the jagged rows (positions outside a sequence point at one of its
    real rows and are masked), so the kernel sees (n * nb, H, block | block + 2w, D) strided views.
    Masked keys get exactly zero gradient, so band gradients are summed back with a plain index_add.
    """

    causal = False  # the band mask carries the causal constraint

    def __init__(self, chunk: Chunk, block: int, window: int, causal: bool, dtype: torch.dtype):
        length, device = chunk.padded_len, chunk.rows.device
        num_blocks = math.ceil(length / block)
        self.block, self.span = block, block + 2 * window
        rows = chunk.rows.view(-1, length)  # (n, L), already clamped into each sequence
        query_positions = torch.arange(num_blocks * block, device=device)
        key_positions = (torch.arange(num_blocks, device=device) * block)[:, None] - window
        key_positions = key_positions + torch.arange(self.span, device=device)[None, :]  # (nb, S)
        self.query_rows = rows[:, query_positions.clamp(max=length - 1)].reshape(-1)
        self.key_rows = rows[:, key_positions.clamp(0, length - 1)].reshape(-1)
        self.query_valid = (query_positions[None, :] < chunk.lengths[:, None]).reshape(-1)
        # query a of a block sees band slot c (position start - w + c) iff |a - (c - w)| <= w
        offset = torch.arange(self.span, device=device)[None, :] - torch.arange(block, device=device)[:, None]
        allowed = (offset >= 0) & (offset <= 2 * window)
        if causal:
            allowed &= offset <= window
        key_ok = (key_positions >= 0)[None] & (key_positions < chunk.lengths[:, None, None])  # (n, nb, S)
        self.mask = _additive(allowed[None, None] & key_ok[:, :, None, :], dtype).view(-1, 1, block, self.span)

    @staticmethod
    def block_for(length: int, window: int | None) -> int | None:
        """Query rows per block (about the window, at least 32), or None when banding does not pay: the
        band must be well under the padded length, since each key is gathered ~(block + 2w) / block times."""
        if window is None:
            return None
        block = max(32, -(-window // 16) * 16)
        return block if 2 * (block + 2 * window) <= length else None

    def queries(self, values: torch.Tensor, zero_padding: bool = False) -> torch.Tensor:
        block = values.index_select(0, self.query_rows)
        if zero_padding:  # padded query slots repeat a real row; their output gradient must be 0
            block.masked_fill_(~self.query_valid[:, None, None], 0)
        return block.view(-1, self.block, values.shape[1], values.shape[2]).transpose(1, 2)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        block = values.index_select(0, self.key_rows)
        return block.view(-1, self.span, values.shape[1], values.shape[2]).transpose(1, 2)

    def scatter_queries_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        rows = block.transpose(1, 2).reshape(-1, block.shape[1], block.shape[3])
        target.index_copy_(0, self.query_rows[self.query_valid], rows[self.query_valid])

    def add_keys_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        target.index_add_(0, self.key_rows, block.transpose(1, 2).reshape(-1, block.shape[1], block.shape[3]))


def _layout(
    chunk: Chunk, dense_queries: int, causal: bool, window: int | None, dtype: torch.dtype
) -> _Padded | _Band:
    block = None if dense_queries else _Band.block_for(chunk.padded_len, window)
    if block is not None:
        return _Band(chunk, block, window, causal, dtype)  # type: ignore[arg-type]
    return _Padded(chunk, dense_queries, causal, window, dtype)


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
        lses, layouts = [], []
        for chunk in chunks:
            layout = _layout(chunk, dense_queries, causal, window, q.dtype)
            o, lse = _flash_forward(layout.queries(q), layout.keys(k), layout.keys(v), 0.0, layout.causal,
                                    attn_mask=layout.mask, scale=scale)
            layout.scatter_queries_(out, o)
            lses.append(lse)
            layouts.append(layout)
        if out_scale != 1.0:
            out.mul_(out_scale)
        ctx.save_for_backward(q, k, v, out)
        ctx.lses, ctx.layouts, ctx.scale, ctx.out_scale = lses, layouts, scale, out_scale
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        out_scale = ctx.out_scale
        for layout, lse in zip(ctx.layouts, ctx.lses, strict=True):
            # the kernel only uses `out` for rowsum(dO * O); undo out_scale on O and move it onto dO
            o_block = layout.queries(out)
            do_block = layout.queries(grad_out, zero_padding=True)
            if out_scale != 1.0:
                o_block, do_block = o_block / out_scale, do_block * out_scale
            gq, gk, gv = _flash_backward(
                do_block,
                layout.queries(q),
                layout.keys(k),
                layout.keys(v),
                o_block,
                lse,
                0.0,
                layout.causal,
                attn_mask=layout.mask,
                scale=ctx.scale,
            )
            layout.scatter_queries_(dq, gq)
            layout.add_keys_(dk, gk)
            layout.add_keys_(dv, gv)
        return dq, dk, dv, None, None, None, None, None, None


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
    """q, k (sum_len, H, D), v (sum_len, H, Dv) -> (sum_len, H, Dv); see `fxrec.ops.jagged_self_attention`."""
    row_bytes = q.shape[1] * max(q.shape[2], v.shape[2]) * q.element_size()
    chunks = plan.chunks(quadratic=True, row_bytes=row_bytes)
    return _JaggedFlashAttention.apply(q, k, v, chunks, 0, causal, scale, out_scale, window)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: JaggedPlan,
    max_len: int,
    scale: float,
    out_scale: float,
) -> torch.Tensor:
    """q (B, T, H, D) over jagged k (sum_len, H, D), v (sum_len, H, Dv) -> (B, T, H, Dv)."""
    batch, num_queries, heads, _ = q.shape
    row_bytes = heads * max(q.shape[3], v.shape[2]) * q.element_size()
    chunks = plan.chunks(quadratic=False, row_bytes=row_bytes, call_overhead=float(16 * num_queries))
    flat_q = q.reshape(batch * num_queries, heads, q.shape[3])
    out = _JaggedFlashAttention.apply(flat_q, k, v, chunks, num_queries, False, scale, out_scale, None)
    return out.view(batch, num_queries, heads, v.shape[2])
