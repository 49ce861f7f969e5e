"""The fast CPU path for jagged attention.

With a C++ compiler on the machine (nearly always), every call goes to the native kernel
(`fxrec/ops/native/jagged_attention.cpp`, wrapped in `native.py`): it reads the jagged rows in place, one
(sequence, head) at a time, with no padding, gathers or scatters, and is the faster one at every length
and density measured (bench/jagged_attention.py). Without a compiler, the bucketed flash path below runs.

The bucketed flash path, and why it has this shape:
- Padding a ragged batch to max_len wastes (1 - mean/max) of the rows and (1 - E[len^2]/max^2) of the
  score work. Sequences are grouped into a few length buckets (`JaggedPlan.chunks`) and each bucket is
  padded only to its own longest member, so one batched kernel call per bucket keeps the matmuls large.
- The kernel is PyTorch's CPU flash attention (`_scaled_dot_product_flash_attention_for_cpu`): it tiles
  over key blocks with an online softmax and returns the log-sum-exp, so no full score matrix is ever
  materialised, and its backward recomputes scores block by block.
- A hand-written autograd.Function saves only the jagged q, k, v, output and the per-bucket
  log-sum-exp. Padded copies live for one chunk at a time in forward and are rebuilt in backward, where
  chunks are cut again into smaller pieces (the backward holds 8 padded blocks next to the 3 gradients),
  so peak memory scales with the jagged size, not with B * max_len.
- Per-call cost matters as much as flops at short lengths (a bucket of 30-row sequences is a few
  microseconds of flash work per sequence): the plan builds every index once, vectorised (`PaddedRows`);
  gradients are written with one index_copy_ per block into buffers with a spare row that takes the
  padding; padding is zeroed with index_fill_, and no buffer is zero-filled that every row overwrites.
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

from fxrec.ops import native
from fxrec.ops._jagged import Chunk, JaggedPlan
from fxrec.ops.jagged_attention.native import NativeAttention
from fxrec.ops.jagged_attention.reference import band_mask

_flash_forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


# Chunk sizes, as fractions of the jagged q (sum_len * H * D * itemsize), clamped to [MIN, MAX] bytes per
# gathered block. The forward keeps ~4 padded blocks of a chunk alive next to `out` (1 jagged unit), so
# half-size chunks are cheap. The backward already holds out, dq, dk, dv (4 units) and each piece adds 8
# blocks (gathered o, dO, q, k, v and the kernel's dq, dk, dv), so pieces of 1/12 add 2/3 of a unit: the
# peak stays near 4.7 jagged units, while a piece still spans tens of short sequences.
FORWARD_PARTS = 2
BACKWARD_PARTS = 12
MIN_CHUNK_BYTES = 32 << 10
MAX_CHUNK_BYTES = 16 << 20
# Fixed cost of one more bucket (its kernel calls, gathers and scatters, ~0.1 ms) in per-head score
# elements of flash work, for the bucket planner; per head because a sequence costs H * L^2.
CALL_OVERHEAD = 8192.0


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool mask -> 0 where allowed, -inf elsewhere (the flash kernel's attn_mask)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf")
    )


class _Padded:
    """One chunk as (n, H, L, D) blocks padded to its longest member: self-attention, or T dense queries
    per example (`dense_queries` = T) over the jagged keys."""

    def __init__(self, chunk: Chunk, dense_queries: int, causal: bool, mask: torch.Tensor | None):
        self.chunk, self.dense_queries, self.causal, self.mask = chunk, dense_queries, causal, mask

    @classmethod
    def build(
        cls, chunk: Chunk, dense_queries: int, causal: bool, window: int | None, dtype: torch.dtype
    ) -> _Padded:
        # causal attention needs no key-padding mask: real query i only sees keys j <= i < length
        mask = None if causal else chunk.key_mask(dtype)
        if window is not None:
            length = chunk.padded_len
            band = _additive(band_mask(length, length, causal, window, chunk.rows.device), dtype)[None, None]
            mask = band if mask is None else mask + band
        return cls(chunk, dense_queries, causal, mask)

    def parts(self, max_bytes: int, row_bytes: int) -> list[tuple[_Padded, slice]]:
        """Self-attention chunks cut into pieces for the backward, whose temporaries are 8 padded blocks
        (gathered o, dO, q, k, v and the kernel's dq, dk, dv) or only the 3 outputs when the chunk is a
        contiguous view; they are kept under 8 * `max_bytes`. The pieces' log-sum-exp is the matching slice.
        """
        if self.dense_queries:
            return [(self, slice(None))]
        temporaries = 3 if self.chunk.contiguous is not None else 8
        per_part = max(1, 8 * max_bytes // (temporaries * self.chunk.padded_len * row_bytes))
        return [
            (_Padded(piece, 0, self.causal, self._slice_mask(part)), part)
            for piece, part in self.chunk.split(per_part)
        ]

    def _slice_mask(self, part: slice) -> torch.Tensor | None:
        if self.mask is None or self.mask.shape[0] == 1:
            return self.mask
        return self.mask[part]

    def queries(self, values: torch.Tensor) -> torch.Tensor:
        """(n, H, Lq, D): jagged rows for self-attention, or the T dense rows of each example."""
        if not self.dense_queries:
            return self.chunk.gather(values)
        rows = values.view(-1, self.dense_queries, values.shape[1], values.shape[2])  # (B, T, H, D)
        return rows.index_select(0, self.chunk.seq_ids).transpose(1, 2)

    def grad_queries(self, values: torch.Tensor) -> torch.Tensor:
        """`queries` with padding positions zeroed (output gradients must not leak into padding)."""
        return self.queries(values) if self.dense_queries else self.chunk.gather_zero_padded(values)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        return self.chunk.gather(values)

    def scatter_queries_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        if not self.dense_queries:
            self.chunk.scatter_(target, block)
            return
        dense = target.view(-1, self.dense_queries, target.shape[1], target.shape[2])
        dense.index_copy_(0, self.chunk.seq_ids, block.transpose(1, 2).to(target.dtype))

    def scatter_query_grads_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        """Into a gradient buffer: (sum_len + 1) rows for self-attention (the spare row takes padding)."""
        if not self.dense_queries:
            self.chunk.scatter_spare_(target, block)
        else:
            self.scatter_queries_(target, block)

    def scatter_key_grads_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        """Into a (sum_len + 1)-row gradient buffer; chunks are disjoint and each key appears once."""
        self.chunk.scatter_spare_(target, block)


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
        self.mask = _additive(allowed[None, None] & key_ok[:, :, None, :], dtype).view(
            -1, 1, block, self.span
        )

    @staticmethod
    def block_for(length: int, window: int | None) -> int | None:
        """Query rows per block (about the window, at least 32), or None when banding does not pay: the
        band must be well under the padded length, since each key is gathered ~(block + 2w) / block times."""
        if window is None:
            return None
        block = max(32, -(-window // 16) * 16)
        return block if 2 * (block + 2 * window) <= length else None

    # a band layout needs zero-initialised key gradients: overlapping bands are summed with index_add_
    accumulates_keys = True

    def parts(self, max_bytes: int, row_bytes: int) -> list[tuple[_Band, slice]]:
        return [(self, slice(None))]

    def queries(self, values: torch.Tensor) -> torch.Tensor:
        block = values.index_select(0, self.query_rows)
        return block.view(-1, self.block, values.shape[1], values.shape[2]).transpose(1, 2)

    def grad_queries(self, values: torch.Tensor) -> torch.Tensor:
        block = values.index_select(0, self.query_rows)
        block.masked_fill_(~self.query_valid[:, None, None], 0)  # padded query slots repeat a real row
        return block.view(-1, self.block, values.shape[1], values.shape[2]).transpose(1, 2)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        block = values.index_select(0, self.key_rows)
        return block.view(-1, self.span, values.shape[1], values.shape[2]).transpose(1, 2)

    def scatter_queries_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        rows = block.transpose(1, 2).reshape(-1, block.shape[1], block.shape[3])
        target.index_copy_(0, self.query_rows[self.query_valid], rows[self.query_valid])

    scatter_query_grads_ = scatter_queries_

    def scatter_key_grads_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        target.index_add_(0, self.key_rows, block.transpose(1, 2).reshape(-1, block.shape[1], block.shape[3]))


def _layout(
    chunk: Chunk, dense_queries: int, causal: bool, window: int | None, dtype: torch.dtype
) -> _Padded | _Band:
    block = None if dense_queries else _Band.block_for(chunk.padded_len, window)
    if block is not None:
        return _Band(chunk, block, window, causal, dtype)  # type: ignore[arg-type]
    return _Padded.build(chunk, dense_queries, causal, window, dtype)


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
        backward_bytes: int,
    ) -> torch.Tensor:
        # every query row of a self-attention batch belongs to exactly one chunk, so `out` needs no zeros;
        # dense queries of an example with an empty history are in no chunk and must read 0
        allocate = torch.zeros if dense_queries else torch.empty
        out = allocate(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype, device=q.device)
        lses, layouts = [], []
        for chunk in chunks:
            layout = _layout(chunk, dense_queries, causal, window, q.dtype)
            o, lse = _flash_forward(
                layout.queries(q),
                layout.keys(k),
                layout.keys(v),
                0.0,
                layout.causal,
                attn_mask=layout.mask,
                scale=scale,
            )
            layout.scatter_queries_(out, o)
            del o  # before the next chunk's gathers: temporaries of two chunks never overlap
            lses.append(lse)
            layouts.append(layout)
        if out_scale != 1.0:
            out.mul_(out_scale)
        ctx.save_for_backward(q, k, v, out)
        ctx.lses, ctx.layouts, ctx.scale, ctx.out_scale = lses, layouts, scale, out_scale
        ctx.dense_queries, ctx.backward_bytes = dense_queries, backward_bytes
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        # gradients land in buffers with one spare row that padding positions are written to, so a whole
        # padded block is scattered with one index_copy_; zeros only where some row may not be written
        accumulates = any(getattr(layout, "accumulates_keys", False) for layout in ctx.layouts)
        query_rows = q.shape[0] if ctx.dense_queries else q.shape[0] + 1
        dq = (torch.zeros if ctx.dense_queries else torch.empty)(query_rows, *q.shape[1:], dtype=q.dtype)
        dk = (torch.zeros if accumulates else torch.empty)(k.shape[0] + 1, *k.shape[1:], dtype=k.dtype)
        dv = (torch.zeros if accumulates else torch.empty)(v.shape[0] + 1, *v.shape[1:], dtype=v.dtype)
        out_scale = ctx.out_scale
        row_bytes = q.shape[1] * max(q.shape[2], v.shape[2]) * q.element_size()
        for layout, lse in zip(ctx.layouts, ctx.lses, strict=True):
            for part, rows in layout.parts(ctx.backward_bytes, row_bytes):
                # the kernel only uses `out` for rowsum(dO * O); undo out_scale on O and move it onto dO
                o_block = part.queries(out)
                do_block = part.grad_queries(grad_out)
                if out_scale != 1.0:
                    o_block, do_block = o_block / out_scale, do_block * out_scale
                gq, gk, gv = _flash_backward(
                    do_block,
                    part.queries(q),
                    part.keys(k),
                    part.keys(v),
                    o_block,
                    lse[rows],
                    0.0,
                    part.causal,
                    attn_mask=part.mask,
                    scale=ctx.scale,
                )
                del o_block, do_block
                part.scatter_query_grads_(dq, gq)
                part.scatter_key_grads_(dk, gk)
                part.scatter_key_grads_(dv, gv)
                del gq, gk, gv
        return dq[: q.shape[0]], dk[: k.shape[0]], dv[: v.shape[0]], None, None, None, None, None, None, None


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
    if native.load():
        return NativeAttention.apply(q, k, v, plan.offsets, plan.offsets, causal, window, scale, out_scale)
    row_bytes = q.shape[1] * max(q.shape[2], v.shape[2]) * q.element_size()
    jagged_bytes = q.shape[0] * row_bytes
    chunk_bytes = min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, jagged_bytes // FORWARD_PARTS))
    backward_bytes = min(chunk_bytes, max(MIN_CHUNK_BYTES, jagged_bytes // BACKWARD_PARTS))
    chunks = plan.chunks(
        quadratic=True, row_bytes=row_bytes, call_overhead=CALL_OVERHEAD / q.shape[1], chunk_bytes=chunk_bytes
    )
    return _JaggedFlashAttention.apply(q, k, v, chunks, 0, causal, scale, out_scale, window, backward_bytes)


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
    if native.load():
        q_offsets = torch.arange(batch + 1, device=q.device) * num_queries
        flat = q.reshape(batch * num_queries, heads, q.shape[3])
        out = NativeAttention.apply(flat, k, v, q_offsets, plan.offsets, False, None, scale, out_scale)
        return out.view(batch, num_queries, heads, v.shape[2])
    row_bytes = heads * max(q.shape[3], v.shape[2]) * q.element_size()
    chunks = plan.chunks(quadratic=False, row_bytes=row_bytes, call_overhead=float(16 * num_queries))
    flat_q = q.reshape(batch * num_queries, heads, q.shape[3])
    out = _JaggedFlashAttention.apply(flat_q, k, v, chunks, num_queries, False, scale, out_scale, None, 0)
    return out.view(batch, num_queries, heads, v.shape[2])
