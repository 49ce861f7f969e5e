"""Jagged attention and GDPA kernels for ragged user histories.

Every op takes the jagged layout of `fxrec.nn.sequence.SequenceTokens`: `values` (sum_len, H, D)
or (sum_len, D) — rows offsets[b]:offsets[b+1] belong to example b, lengths 0..max_len — plus
`offsets` (B + 1,) int64 and `max_len`. Nothing is padded to the batch maximum. `offsets` may also be a
`JaggedPlan` of them: a model that calls several ops over one batch builds the plan once (the sequence
arches in `fxrec.interactions` do), so whatever the backend derives from the offsets is derived once.

Each op has one dispatch point and three backends (`Backend`): "reference" (plain PyTorch, the test
oracle), "cpu" and "triton" (offsets-driven GPU kernels). backend="auto" picks cpu for CPU tensors and
triton for CUDA tensors. The cpu backend runs fxrec's C++ kernels (`fxrec.ops.native`, built on first use
with the machine's compiler), which read the jagged rows in place; on a machine without a compiler it
runs length buckets over PyTorch's flash kernel instead. Both have hand-written backwards.

Example (a Kunlun/InterFormer sequence block)::

    tokens: SequenceTokens                       # values (sum_len, d)
    q, k, v = project(tokens.values).view(-1, 3, heads, d // heads).unbind(1)   # (sum_len, H, D) each
    mixed = jagged_self_attention(q, k, v, tokens.offsets, tokens.max_len, window=100)      # SWA
    pooled = jagged_dense_attention(seeds.expand(B, -1, -1, -1), k, v, tokens.offsets, tokens.max_len)  # PMA
    ffn = gdpa(q, k_ctx, v_ctx, tokens.offsets, tokens.max_len, activation="silu")  # k_ctx (B, d_ff, H, D)
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from fxrec.ops import flops  # noqa: F401  (declares fxrec's custom ops and their FLOP formulas)
from fxrec.ops._jagged import (
    JaggedPlan,
    as_plan,
    check_jagged,
    jagged_first,
    jagged_last,
    jagged_prepend,
    jagged_select,
)
from fxrec.ops.dispatch import Backend, implementation, resolve_backend

__all__ = [
    "Backend",
    "resolve_backend",
    "JaggedPlan",
    "jagged_prepend",
    "jagged_first",
    "jagged_last",
    "jagged_select",
    "jagged_self_attention",
    "sliding_window_attention",
    "jagged_dense_attention",
    "gdpa",
    "GDPA_ACTIVATIONS",
]

Normalize = Literal["softmax", "max_len"]
GDPA_ACTIVATIONS = ("gelu", "silu", "relu", "relu2", "raw")


def _with_heads(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(rows, D) -> (rows, 1, D) so every backend sees a head axis; remembers to squeeze it back."""
    return (x.unsqueeze(-2), True) if x.dim() == 2 else (x, False)


def _out_scale(normalize: str, max_len: int) -> float:
    if normalize == "softmax":
        return 1.0
    if normalize == "max_len":
        return 1.0 / max(max_len, 1)
    raise ValueError(f"normalize must be 'softmax' or 'max_len'; got {normalize!r}")


def _check_window(window: int | None) -> None:
    if window is not None and window < 0:
        raise ValueError(f"window must be >= 0 or None; got {window}")


def jagged_self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor | JaggedPlan,
    max_len: int,
    *,
    causal: bool = False,
    scale: float | None = None,
    normalize: Normalize = "softmax",
    window: int | None = None,
    backend: Backend | str = Backend.AUTO,
) -> torch.Tensor:
    """Multi-head self-attention within each sequence of a jagged batch.

    out[i] = sum_j softmax_j(scale * q_i . k_j + mask_ij) v_j, over keys j of i's own sequence,
    times 1/max_len when normalize="max_len" (FBGEMM SLL's jagged flash attention convention, which
    also uses scale=1.0).

    Args:
        q, k: (sum_len, H, D) or (sum_len, D); v: (sum_len, H, Dv) or (sum_len, Dv).
        offsets: (B + 1,) int64, or a `JaggedPlan` of them; max_len: cap on every length.
        causal: query at position i sees keys at positions j <= i of its sequence.
        scale: multiplies q k^T; default 1/sqrt(D).
        normalize: "softmax" (rows sum to 1) or "max_len" (rows sum to 1/max_len).
        window: keep only keys with |i - j| <= window (sliding-window attention); None = all.
        backend: "auto" | "reference" | "cpu" | "triton".
    Returns:
        (sum_len, H, Dv), or (sum_len, Dv) for 2-D inputs.
    """
    (q, squeeze), (k, _), (v, _) = _with_heads(q), _with_heads(k), _with_heads(v)
    plan = as_plan(offsets)
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_jagged(name, tensor, plan, max_len)
    _check_window(window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    fn = implementation("jagged_self_attention", backend, q.device)
    out = fn(q, k, v, plan, max_len, causal, scale, _out_scale(normalize, max_len), window)
    return out.squeeze(-2) if squeeze else out


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor | JaggedPlan,
    max_len: int,
    window: int,
    *,
    causal: bool = False,
    scale: float | None = None,
    normalize: Normalize = "softmax",
    backend: Backend | str = Backend.AUTO,
) -> torch.Tensor:
    """Sliding-window jagged attention (Kunlun's SWA): `jagged_self_attention` with |i - j| <= window."""
    return jagged_self_attention(
        q, k, v, offsets, max_len, causal=causal, scale=scale, normalize=normalize, window=window, backend=backend
    )


def jagged_dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor | JaggedPlan,
    max_len: int,
    *,
    scale: float | None = None,
    normalize: Normalize = "softmax",
    backend: Backend | str = Backend.AUTO,
) -> torch.Tensor:
    """A few dense queries per example (PMA / HSP seeds, CLS tokens) attending over a jagged history.

    Args:
        q: (B, T, H, D) or (B, T, D) dense queries (shared seeds: `seeds.expand(B, ...)`, no copy needed).
        k: (sum_len, H, D) or (sum_len, D); v: (sum_len, H, Dv) or (sum_len, Dv) jagged history.
        offsets: (B + 1,) int64, or a `JaggedPlan` of them; max_len: cap on every length.
        scale: default 1/sqrt(D); normalize: "softmax" or "max_len" (as in `jagged_self_attention`).
    Returns:
        (B, T, H, Dv) or (B, T, Dv). An example with an empty history gets zeros.
    """
    squeeze = q.dim() == 3
    if squeeze:
        q = q.unsqueeze(-2)
    (k, _), (v, _) = _with_heads(k), _with_heads(v)
    plan = as_plan(offsets)
    if q.dim() != 4 or q.shape[0] != plan.batch_size:
        raise ValueError(f"q must be (B, T, H, D) with B = offsets.numel() - 1; got {tuple(q.shape)}")
    check_jagged("k", k, plan, max_len)
    check_jagged("v", v, plan, max_len)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    fn = implementation("jagged_dense_attention", backend, q.device)
    out = fn(q.contiguous(), k, v, plan, max_len, scale, _out_scale(normalize, max_len))
    return out.squeeze(-2) if squeeze else out


def gdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor | JaggedPlan,
    max_len: int,
    *,
    activation: str = "gelu",
    scale: float | None = None,
    window: int | None = None,
    backend: Backend | str = Backend.AUTO,
) -> torch.Tensor:
    """Generalized dot-product attention (Kunlun): out_i = scale * sum_j act(q_i . k_j) v_j, no softmax.

    With k, v generated per example from non-sequence context this is a personalised FFN applied to
    every history token (T = the FFN hidden size, e.g. 256).

    Args:
        q: (sum_len, H, D) or (sum_len, D) jagged queries (history tokens).
        k: (B, T, H, D) or (B, T, D); v: (B, T, H, Dv) or (B, T, Dv) short dense per-example keys/values.
        offsets: (B + 1,) int64, or a `JaggedPlan` of them; max_len: cap on every length.
        activation: "gelu" (exact erf), "silu", "relu", "relu2" (relu squared) or "raw" (identity),
            applied to the raw scores.
        scale: multiplies act(q k^T); default 1/max_len.
        window: keep only pairs with |i - j| <= window (i the query's position in its sequence, j the
            key index); others contribute 0 (act(0) = 0 for every activation).
    Returns:
        (sum_len, H, Dv) or (sum_len, Dv).
    """
    (q, squeeze) = _with_heads(q)
    if k.dim() == 3:
        k, v = k.unsqueeze(-2), v.unsqueeze(-2)
    plan = as_plan(offsets)
    check_jagged("q", q, plan, max_len)
    if k.dim() != 4 or k.shape[0] != plan.batch_size or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k, v must be (B, T, H, D) with B = offsets.numel() - 1; got {tuple(k.shape)}, {tuple(v.shape)}")
    if activation not in GDPA_ACTIVATIONS:
        raise ValueError(f"activation must be one of {GDPA_ACTIVATIONS}; got {activation!r}")
    _check_window(window)
    scale = 1.0 / max(max_len, 1) if scale is None else float(scale)
    fn = implementation("gdpa", backend, q.device)
    out = fn(q, k.contiguous(), v.contiguous(), plan, max_len, activation, scale, window)
    return out.squeeze(-2) if squeeze else out
