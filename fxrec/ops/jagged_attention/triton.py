"""Offsets-driven Triton kernels for jagged attention (GPU; CPU only under TRITON_INTERPRET=1).

One program per (row block, sequence * head): it reads its sequence's bounds from the offsets, returns
at once if its row block starts past the sequence's length (no work on padding), and loops over key
blocks of that sequence only, with an online softmax. The log-sum-exp of every row is stored so the
backward recomputes probabilities block by block instead of keeping the (len x len) matrix: one kernel
accumulates dK, dV per key block (looping over query blocks), another dQ per query block.

Queries and keys have separate offsets, so the same kernels serve self-attention (q_offsets = offsets)
and dense queries over a jagged history (q_offsets = arange(B + 1) * T).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from fxrec.ops import library
from fxrec.ops._jagged import JaggedPlan
from fxrec.ops._triton import block_size, load_rows

BLOCK_M = 16
BLOCK_N = 16


@triton.jit
def _mask(offs_m, offs_n, k_len, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    valid = (offs_n < k_len)[None, :] & (offs_m >= 0)[:, None]
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None])
    if HAS_WINDOW:
        distance = offs_m[:, None] - offs_n[None, :]
        valid = valid & (distance <= window) & (distance >= -window)
    return valid


@triton.jit
def _key_range(start_m, k_len, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Key blocks a query block [start_m, start_m + BLOCK_M) can see: skip the rest entirely."""
    lo = 0
    hi = k_len
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BLOCK_M)
    if HAS_WINDOW:
        lo = tl.maximum(0, start_m - window) // BLOCK_N * BLOCK_N
        hi = tl.minimum(hi, start_m + BLOCK_M + window)
    return lo, hi


@triton.jit
def _attn_fwd(Q, K, V, OUT, LSE, q_offsets, k_offsets, scale, out_scale, window, H, D, DV,
              stride_q, stride_k, stride_v, stride_o,
              CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_begin = tl.load(q_offsets + b)
    q_len = tl.load(q_offsets + b + 1) - q_begin
    k_begin = tl.load(k_offsets + b)
    k_len = tl.load(k_offsets + b + 1) - k_begin
    start_m = pid_m * BLOCK_M
    if start_m >= q_len:  # this row block is past the sequence: nothing to do
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < q_len
    q = load_rows(Q, q_begin, offs_m, row_ok, stride_q, h * D, offs_d, D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    lo, hi = _key_range(start_m, k_len, window, CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < k_len
        k = tl.load(K + (k_begin + offs_n)[None, :] * stride_k + h * D + offs_d[:, None],
                    mask=key_ok[None, :] & (offs_d < D)[:, None], other=0.0)
        v = load_rows(V, k_begin, offs_n, key_ok, stride_v, h * DV, offs_dv, DV)
        s = tl.dot(q, k).to(tl.float32) * scale
        s = tl.where(_mask(offs_m, offs_n, k_len, window, CAUSAL, HAS_WINDOW), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet stays at 0
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        m_i = m_new
    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None] * out_scale
    tl.store(OUT + (q_begin + offs_m)[:, None] * stride_o + h * DV + offs_dv[None, :], out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv < DV)[None, :])
    lse = tl.where(has_keys, m_i + tl.log(tl.where(has_keys, l_i, 1.0)), 0.0)
    tl.store(LSE + (q_begin + offs_m) * H + h, lse, mask=row_ok)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV_OUT, q_offsets, k_offsets, scale, out_scale, window, H, D, DV,
                   stride_q, stride_k, stride_v, stride_do,
                   CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_begin = tl.load(q_offsets + b)
    q_len = tl.load(q_offsets + b + 1) - q_begin
    k_begin = tl.load(k_offsets + b)
    k_len = tl.load(k_offsets + b + 1) - k_begin
    start_n = pid_n * BLOCK_N
    if start_n >= k_len:
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    key_ok = offs_n < k_len
    k = load_rows(K, k_begin, offs_n, key_ok, stride_k, h * D, offs_d, D)
    v = load_rows(V, k_begin, offs_n, key_ok, stride_v, h * DV, offs_dv, DV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    lo = 0
    hi = q_len
    if CAUSAL:
        lo = start_n // BLOCK_M * BLOCK_M
    if HAS_WINDOW:
        lo = tl.maximum(lo, tl.maximum(0, start_n - window) // BLOCK_M * BLOCK_M)
        hi = tl.minimum(hi, start_n + BLOCK_N + window)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < q_len
        q = load_rows(Q, q_begin, offs_m, row_ok, stride_q, h * D, offs_d, D)
        do = load_rows(DO, q_begin, offs_m, row_ok, stride_do, h * DV, offs_dv, DV).to(tl.float32) * out_scale
        lse = tl.load(LSE + (q_begin + offs_m) * H + h, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + (q_begin + offs_m) * H + h, mask=row_ok, other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
        valid = _mask(offs_m, offs_n, k_len, window, CAUSAL, HAS_WINDOW) & row_ok[:, None]
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p), do)
        dp = tl.dot(do, tl.trans(v.to(tl.float32)))
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds), q.to(tl.float32)) * scale
    tl.store(DK + (k_begin + offs_n)[:, None] * stride_k + h * D + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=key_ok[:, None] & (offs_d < D)[None, :])
    tl.store(DV_OUT + (k_begin + offs_n)[:, None] * stride_v + h * DV + offs_dv[None, :],
             dv.to(DV_OUT.dtype.element_ty), mask=key_ok[:, None] & (offs_dv < DV)[None, :])


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, q_offsets, k_offsets, scale, out_scale, window, H, D, DV,
                 stride_q, stride_k, stride_v, stride_do,
                 CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_begin = tl.load(q_offsets + b)
    q_len = tl.load(q_offsets + b + 1) - q_begin
    k_begin = tl.load(k_offsets + b)
    k_len = tl.load(k_offsets + b + 1) - k_begin
    start_m = pid_m * BLOCK_M
    if start_m >= q_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < q_len
    q = load_rows(Q, q_begin, offs_m, row_ok, stride_q, h * D, offs_d, D)
    do = load_rows(DO, q_begin, offs_m, row_ok, stride_do, h * DV, offs_dv, DV).to(tl.float32) * out_scale
    lse = tl.load(LSE + (q_begin + offs_m) * H + h, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + (q_begin + offs_m) * H + h, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, hi = _key_range(start_m, k_len, window, CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < k_len
        k = load_rows(K, k_begin, offs_n, key_ok, stride_k, h * D, offs_d, D)
        v = load_rows(V, k_begin, offs_n, key_ok, stride_v, h * DV, offs_dv, DV)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
        valid = _mask(offs_m, offs_n, k_len, window, CAUSAL, HAS_WINDOW)
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v.to(tl.float32)))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds, k.to(tl.float32)) * scale
    tl.store(DQ + (q_begin + offs_m)[:, None] * stride_q + h * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])


@torch.library.register_kernel("fxrec_triton::jagged_attention_forward", ("cuda", "cpu"), lib=library.TRITON)
def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor,
    k_offsets: torch.Tensor,
    causal: bool,
    window: int,
    scale: float,
    out_scale: float,
    max_q_len: int,
    max_k_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel (cpu: TRITON_INTERPRET=1 only): out (rows, H, Dv) and log-sum-exp (rows, H)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    rows, heads, dim = q.shape
    batch = q_offsets.numel() - 1
    out = torch.zeros(rows, heads, v.shape[2], dtype=q.dtype, device=q.device)
    lse = torch.zeros(rows, heads, dtype=torch.float32, device=q.device)
    if rows and batch:
        grid = (triton.cdiv(max(max_q_len, 1), BLOCK_M), batch * heads)
        _attn_fwd[grid](q, k, v, out, lse, q_offsets, k_offsets, scale, out_scale, max(window, 0), heads, dim,
                        v.shape[2], q.stride(0), k.stride(0), v.stride(0), out.stride(0),
                        CAUSAL=causal, HAS_WINDOW=window >= 0, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                        BLOCK_D=block_size(dim), BLOCK_DV=block_size(v.shape[2]))
    return out, lse


@torch.library.register_kernel("fxrec_triton::jagged_attention_backward", ("cuda", "cpu"), lib=library.TRITON)
def _backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    q_offsets: torch.Tensor,
    k_offsets: torch.Tensor,
    causal: bool,
    window: int,
    scale: float,
    out_scale: float,
    max_q_len: int,
    max_k_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward kernels: dq, dk, dv."""
    grad_out = grad_out.contiguous()
    # rowsum(dO * OUT) equals rowsum(P * dP) of the unscaled softmax (out_scale cancels)
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    heads, dim, batch = q.shape[1], q.shape[2], q_offsets.numel() - 1
    common = dict(CAUSAL=causal, HAS_WINDOW=window >= 0, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                  BLOCK_D=block_size(dim), BLOCK_DV=block_size(v.shape[2]))
    strides = (q.stride(0), k.stride(0), v.stride(0), grad_out.stride(0))
    if q.shape[0] and k.shape[0] and batch:
        _attn_bwd_dkdv[(triton.cdiv(max(max_k_len, 1), BLOCK_N), batch * heads)](
            q, k, v, grad_out, lse, delta, dk, dv, q_offsets, k_offsets, scale, out_scale, max(window, 0),
            heads, dim, v.shape[2], *strides, **common)
        _attn_bwd_dq[(triton.cdiv(max(max_q_len, 1), BLOCK_M), batch * heads)](
            q, k, v, grad_out, lse, delta, dq, q_offsets, k_offsets, scale, out_scale, max(window, 0),
            heads, dim, v.shape[2], *strides, **common)
    return dq, dk, dv


class _TritonJaggedAttention(torch.autograd.Function):
    """The kernels run as `torch.ops.fxrec_triton.*` (`fxrec.ops.library`), so FlopCounterMode and
    torch.compile see them; window -1 means none."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_offsets: torch.Tensor,
        k_offsets: torch.Tensor,
        max_q_len: int,
        max_k_len: int,
        causal: bool,
        scale: float,
        out_scale: float,
        window: int | None,
    ) -> torch.Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        window = -1 if window is None else window
        out, lse = torch.ops.fxrec_triton.jagged_attention_forward(
            q, k, v, q_offsets, k_offsets, causal, window, scale, out_scale, max_q_len, max_k_len
        )
        ctx.save_for_backward(q, k, v, out, lse, q_offsets, k_offsets)
        ctx.args = (causal, window, scale, out_scale, max_q_len, max_k_len)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse, q_offsets, k_offsets = ctx.saved_tensors
        dq, dk, dv = torch.ops.fxrec_triton.jagged_attention_backward(
            grad_out, q, k, v, out, lse, q_offsets, k_offsets, *ctx.args
        )
        return dq, dk, dv, None, None, None, None, None, None, None, None


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
    offsets = plan.offsets.to(torch.int64).contiguous()
    return _TritonJaggedAttention.apply(q, k, v, offsets, offsets, max_len, max_len, causal, scale, out_scale, window)


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
    batch, num_queries, heads, dim = q.shape
    q_offsets = torch.arange(batch + 1, device=q.device, dtype=torch.int64) * num_queries
    out = _TritonJaggedAttention.apply(q.reshape(batch * num_queries, heads, dim), k, v, q_offsets,
                                       plan.offsets.to(torch.int64).contiguous(), num_queries, max_len, False, scale,
                                       out_scale, None)
    return out.view(batch, num_queries, heads, v.shape[2])
