"""Offsets-driven Triton kernels for GDPA (GPU; CPU only under TRITON_INTERPRET=1).

Queries are jagged; the short per-example keys/values (B, T, H, D) are addressed as rows b * T + j.
Grid (query row block, example * head) with an early exit past the example's length; each program
loops over the T keys in blocks and accumulates scale * act(q k^T) v — no softmax, so no running max
and nothing to store for backward. Backward: one kernel per key block accumulates dK, dV over the
example's query blocks, another per query block accumulates dQ; both recompute the scores.
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
_ACTIVATIONS = {"gelu": 0, "silu": 1, "relu": 2, "relu2": 3, "raw": 4}


@triton.jit
def _act(s, ACT: tl.constexpr):
    if ACT == 0:
        return 0.5 * s * (1.0 + tl.erf(s * 0.7071067811865476))
    elif ACT == 1:
        return s * tl.sigmoid(s)
    elif ACT == 2:
        return tl.maximum(s, 0.0)
    elif ACT == 3:
        r = tl.maximum(s, 0.0)
        return r * r
    else:
        return s


@triton.jit
def _act_grad(s, ACT: tl.constexpr):
    if ACT == 0:
        return 0.5 * (1.0 + tl.erf(s * 0.7071067811865476)) + s * tl.exp(-0.5 * s * s) * 0.3989422804014327
    elif ACT == 1:
        sig = tl.sigmoid(s)
        return sig * (1.0 + s * (1.0 - sig))
    elif ACT == 2:
        return tl.where(s > 0, 1.0, 0.0)
    elif ACT == 3:
        return 2.0 * tl.maximum(s, 0.0)
    else:
        return s * 0.0 + 1.0


@triton.jit
def _valid(offs_m, offs_n, q_len, keys, window, HAS_WINDOW: tl.constexpr):
    valid = (offs_m < q_len)[:, None] & (offs_n < keys)[None, :]
    if HAS_WINDOW:
        distance = offs_m[:, None] - offs_n[None, :]
        valid = valid & (distance <= window) & (distance >= -window)
    return valid


@triton.jit
def _gdpa_fwd(Q, K, V, OUT, offsets, scale, window, H, D, DV, KEYS, stride_q, stride_k, stride_v, stride_o,
              ACT: tl.constexpr, HAS_WINDOW: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_begin = tl.load(offsets + b)
    q_len = tl.load(offsets + b + 1) - q_begin
    start_m = pid_m * BLOCK_M
    if start_m >= q_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < q_len
    q = load_rows(Q, q_begin, offs_m, row_ok, stride_q, h * D, offs_d, D)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start_n in range(0, KEYS, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < KEYS
        k = tl.load(K + (b * KEYS + offs_n)[None, :] * stride_k + h * D + offs_d[:, None],
                    mask=key_ok[None, :] & (offs_d < D)[:, None], other=0.0)
        v = load_rows(V, b * KEYS, offs_n, key_ok, stride_v, h * DV, offs_dv, DV)
        s = tl.dot(q, k).to(tl.float32)
        p = tl.where(_valid(offs_m, offs_n, q_len, KEYS, window, HAS_WINDOW), _act(s, ACT), 0.0)
        acc += tl.dot(p.to(v.dtype), v).to(tl.float32)
    tl.store(OUT + (q_begin + offs_m)[:, None] * stride_o + h * DV + offs_dv[None, :],
             (acc * scale).to(OUT.dtype.element_ty), mask=row_ok[:, None] & (offs_dv < DV)[None, :])


@triton.jit
def _gdpa_bwd_dkdv(Q, K, V, DO, DK, DV_OUT, offsets, scale, window, H, D, DV, KEYS,
                   stride_q, stride_k, stride_v, stride_do,
                   ACT: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_begin = tl.load(offsets + b)
    q_len = tl.load(offsets + b + 1) - q_begin
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    key_ok = offs_n < KEYS
    k = load_rows(K, b * KEYS, offs_n, key_ok, stride_k, h * D, offs_d, D)
    v = load_rows(V, b * KEYS, offs_n, key_ok, stride_v, h * DV, offs_dv, DV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start_m in range(0, q_len, BLOCK_M):  # an empty example runs no iteration and stores zeros
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < q_len
        q = load_rows(Q, q_begin, offs_m, row_ok, stride_q, h * D, offs_d, D)
        do = load_rows(DO, q_begin, offs_m, row_ok, stride_do, h * DV, offs_dv, DV).to(tl.float32) * scale
        s = tl.dot(q, tl.trans(k)).to(tl.float32)
        valid = _valid(offs_m, offs_n, q_len, KEYS, window, HAS_WINDOW)
        p = tl.where(valid, _act(s, ACT), 0.0)
        dv += tl.dot(tl.trans(p), do)
        ds = tl.where(valid, tl.dot(do, tl.trans(v.to(tl.float32))) * _act_grad(s, ACT), 0.0)
        dk += tl.dot(tl.trans(ds), q.to(tl.float32))
    tl.store(DK + (b * KEYS + offs_n)[:, None] * stride_k + h * D + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=key_ok[:, None] & (offs_d < D)[None, :])
    tl.store(DV_OUT + (b * KEYS + offs_n)[:, None] * stride_v + h * DV + offs_dv[None, :],
             dv.to(DV_OUT.dtype.element_ty), mask=key_ok[:, None] & (offs_dv < DV)[None, :])


@triton.jit
def _gdpa_bwd_dq(Q, K, V, DO, DQ, offsets, scale, window, H, D, DV, KEYS, stride_q, stride_k, stride_v, stride_do,
                 ACT: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_begin = tl.load(offsets + b)
    q_len = tl.load(offsets + b + 1) - q_begin
    start_m = pid_m * BLOCK_M
    if start_m >= q_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < q_len
    q = load_rows(Q, q_begin, offs_m, row_ok, stride_q, h * D, offs_d, D)
    do = load_rows(DO, q_begin, offs_m, row_ok, stride_do, h * DV, offs_dv, DV).to(tl.float32) * scale
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, KEYS, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < KEYS
        k = load_rows(K, b * KEYS, offs_n, key_ok, stride_k, h * D, offs_d, D)
        v = load_rows(V, b * KEYS, offs_n, key_ok, stride_v, h * DV, offs_dv, DV)
        s = tl.dot(q, tl.trans(k)).to(tl.float32)
        valid = _valid(offs_m, offs_n, q_len, KEYS, window, HAS_WINDOW)
        ds = tl.where(valid, tl.dot(do, tl.trans(v.to(tl.float32))) * _act_grad(s, ACT), 0.0)
        dq += tl.dot(ds, k.to(tl.float32))
    tl.store(DQ + (q_begin + offs_m)[:, None] * stride_q + h * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])


@torch.library.register_kernel("fxrec_triton::gdpa_forward", ("cuda", "cpu"), lib=library.TRITON)
def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    activation: str,
    scale: float,
    window: int,
    max_len: int,
) -> torch.Tensor:
    """The forward kernel (cpu: TRITON_INTERPRET=1 only): (rows, H, Dv)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    batch, keys, heads, dim = k.shape
    out = torch.zeros(q.shape[0], heads, v.shape[3], dtype=q.dtype, device=q.device)
    if q.shape[0] and batch:
        _gdpa_fwd[(triton.cdiv(max(max_len, 1), BLOCK_M), batch * heads)](
            q, k, v, out, offsets, scale, max(window, 0), heads, dim, v.shape[3], keys,
            q.stride(0), k.stride(1), v.stride(1), out.stride(0),
            ACT=_ACTIVATIONS[activation], HAS_WINDOW=window >= 0, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
            BLOCK_D=block_size(dim), BLOCK_DV=block_size(v.shape[3]))
    return out


@torch.library.register_kernel("fxrec_triton::gdpa_backward", ("cuda", "cpu"), lib=library.TRITON)
def _backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    activation: str,
    scale: float,
    window: int,
    max_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward kernels: dq, dk, dv (scores recomputed)."""
    grad_out = grad_out.contiguous()
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    batch, keys, heads, dim = k.shape
    common = dict(ACT=_ACTIVATIONS[activation], HAS_WINDOW=window >= 0, BLOCK_M=BLOCK_M,
                  BLOCK_N=BLOCK_N, BLOCK_D=block_size(dim), BLOCK_DV=block_size(v.shape[3]))
    strides = (q.stride(0), k.stride(1), v.stride(1), grad_out.stride(0))
    if batch:
        _gdpa_bwd_dkdv[(triton.cdiv(keys, BLOCK_N), batch * heads)](
            q, k, v, grad_out, dk, dv, offsets, scale, max(window, 0), heads, dim, v.shape[3], keys, *strides,
            **common)
    if q.shape[0] and batch:
        _gdpa_bwd_dq[(triton.cdiv(max(max_len, 1), BLOCK_M), batch * heads)](
            q, k, v, grad_out, dq, offsets, scale, max(window, 0), heads, dim, v.shape[3], keys, *strides,
            **common)
    return dq, dk, dv


class _TritonGDPA(torch.autograd.Function):
    """The kernels run as `torch.ops.fxrec_triton.*` (`fxrec.ops.library`), so FlopCounterMode and
    torch.compile see them; window -1 means none."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        offsets: torch.Tensor,
        max_len: int,
        activation: str,
        scale: float,
        window: int | None,
    ) -> torch.Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        window = -1 if window is None else window
        out = torch.ops.fxrec_triton.gdpa_forward(q, k, v, offsets, activation, scale, window, max_len)
        ctx.save_for_backward(q, k, v, offsets)
        ctx.args = (activation, scale, window, max_len)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, offsets = ctx.saved_tensors
        dq, dk, dv = torch.ops.fxrec_triton.gdpa_backward(grad_out, q, k, v, offsets, *ctx.args)
        return dq, dk, dv, None, None, None, None, None


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
    return _TritonGDPA.apply(q, k, v, plan.offsets.to(torch.int64).contiguous(), max_len, activation, scale, window)
