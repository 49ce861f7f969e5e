"""FLOP formulas of fxrec's custom ops, for `torch.utils.flop_counter.FlopCounterMode`.

FlopCounterMode counts only the ops it has a formula for; without these, the native C++ and Triton
kernels (`fxrec.ops.library`) counted 0. The formulas are registered when `fxrec.ops` is imported.

Convention: torch's, for model FLOPs. A matmul of (M, K) by (K, N) is 2 * M * N * K FLOPs; element-wise
work (softmax, activations, scaling) is not counted. Each example b is counted over its real lengths
(read from the offsets the op receives; padding is never counted): m_b queries, n_b keys (GDPA: n_b = T,
the example's dense keys), H heads, head dims D (queries, keys) and Dv (values), and

    pairs_b = #{(i, j): 0 <= i < m_b, 0 <= j < n_b, j <= i if causal, |i - j| <= window if windowed}

the (query, key) pairs the mask allows (m_b * n_b without a mask), in closed form (`allowed_pairs`).

    attention forward   sum_b 2 H pairs_b (D + Dv)      scores S = q k^T, then P v
    attention backward  sum_b 2 H pairs_b 2 (D + Dv)    dP = dO v^T, dV = P^T dO, dQ = dS k, dK = dS^T q
    GDPA forward        sum_b 2 H pairs_b (D + Dv)      act(q k^T) v
    GDPA backward       sum_b 2 H pairs_b 2 (D + Dv)    the same four gradient matmuls

The forward is exactly torch's `sdpa_flop_count` per example (torch counts its NJT flash attention the
same way, per sequence), and the backward is 2x the forward: what autograd counts for the backward of
the reference backends' two matmuls. Two departures from torch's SDPA formulas, the same for every op:

- masks: torch counts the full square even when is_causal=True; fxrec counts only the allowed pairs,
  for causal masks and sliding windows alike. That is the work fxrec's kernels do (a mask is a loop
  bound in the C++ kernels and a skipped key block in the Triton ones, up to one block's edge) and
  what the model computes, so a sliding-window layer over a long history is not counted as full
  attention;
- recomputation: the kernels' backwards recompute the scores (one more q k^T), which torch's flash
  backward formula counts; fxrec leaves it out, as model FLOPs (MFU) leave out rematerialisation, so
  a kernel's count does not depend on whether it saves or recomputes.

So on the same inputs a native or Triton op counts exactly what the reference backend counts on an
unpadded, unmasked batch, and never more: the padded reference is counted for its padding and masked
pairs too.

Under fake tensors (no offset values) a Triton op is counted as if every sequence had the batch's
longest length, as torch does for NJT; the native ops have no fake implementation.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from fxrec.ops import library  # noqa: F401  (declares the ops the formulas attach to)

_native = torch.ops.fxrec_native
_triton = torch.ops.fxrec_triton


def allowed_pairs(query_len: int, key_len: int, causal: bool, window: int | None) -> int:
    """#{(i, j) in [0, query_len) x [0, key_len): j <= i if causal, |i - j| <= window if given}."""
    if not causal and window is None:
        return query_len * key_len
    high = query_len if window is None else window  # i - j <= high
    low = 0 if causal else -window  # type: ignore[operator]  (window is set when not causal)
    return _pairs_up_to(query_len, key_len, high) - _pairs_up_to(query_len, key_len, low - 1)


def _pairs_up_to(query_len: int, key_len: int, bound: int) -> int:
    """#{(i, j) in [0, query_len) x [0, key_len): i - j <= bound}: row i has the keys j >= i - bound."""
    total = min(max(bound + 1, 0), query_len) * key_len  # rows i <= bound see every key
    first, last = max(bound + 1, 0), min(query_len - 1, bound + key_len - 1)  # rows seeing 1..key_len-1 keys
    if last >= first:
        count = last - first + 1
        total += count * key_len - (first + last - 2 * bound) * count // 2  # sum of key_len - (i - bound)
    return total


def attention_flops(
    query_lengths: list[int],
    key_lengths: list[int],
    heads: int,
    dim: int,
    value_dim: int,
    causal: bool = False,
    window: int | None = None,
    backward: bool = False,
) -> int:
    """FLOPs of softmax or GDPA attention over examples of these lengths (the module docstring's table).

    GDPA is the same count with key_lengths = T for every example and causal=False.
    """
    per_pair = 2 * heads * (dim + value_dim) * (2 if backward else 1)
    pairs = sum(
        count * allowed_pairs(m, n, causal, window)
        for (m, n), count in Counter(zip(query_lengths, key_lengths, strict=True)).items()
    )
    return per_pair * pairs


def lengths(offsets: Tensor, max_len: int | None = None) -> list[int]:
    """Per-example lengths from (B + 1,) offsets; under fake tensors, `max_len` for every example."""
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(offsets, FakeTensor) or offsets.device.type == "meta":
        if max_len is None:
            raise ValueError("FLOPs of an op with fake offsets need the batch's longest length")
        return [max_len] * (offsets.shape[0] - 1)
    return (offsets[1:] - offsets[:-1]).tolist()


def _window(window: int) -> int | None:
    return None if window < 0 else window


def _attention(
    q: Tensor,
    v: Tensor,
    query_lengths: list[int],
    key_lengths: list[int],
    causal: bool,
    window: int,
    backward: bool,
) -> int:
    """q (rows, H, D), v (keys, H, Dv)."""
    heads, dim, value_dim = q.shape[1], q.shape[2], v.shape[2]
    return attention_flops(
        query_lengths, key_lengths, heads, dim, value_dim, causal, _window(window), backward
    )


def _gdpa(q: Tensor, v: Tensor, query_lengths: list[int], window: int, backward: bool) -> int:
    """q (rows, H, D), v (B, T, H, Dv)."""
    keys = [v.shape[1]] * len(query_lengths)
    return attention_flops(
        query_lengths, keys, q.shape[1], q.shape[2], v.shape[3], False, _window(window), backward
    )


@register_flop_formula(_native.jagged_attention_forward, get_raw=True)
def native_attention_forward_flop(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_offsets: Tensor,
    k_offsets: Tensor,
    causal: bool,
    window: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    return _attention(q, v, lengths(q_offsets), lengths(k_offsets), causal, window, backward=False)


@register_flop_formula(_native.jagged_attention_backward, get_raw=True)
def native_attention_backward_flop(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    q_offsets: Tensor,
    k_offsets: Tensor,
    causal: bool,
    window: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    return _attention(q, v, lengths(q_offsets), lengths(k_offsets), causal, window, backward=True)


@register_flop_formula(_triton.jagged_attention_forward, get_raw=True)
def triton_attention_forward_flop(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_offsets: Tensor,
    k_offsets: Tensor,
    causal: bool,
    window: int,
    scale: float,
    out_scale: float,
    max_q_len: int,
    max_k_len: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    query_lengths, key_lengths = lengths(q_offsets, max_q_len), lengths(k_offsets, max_k_len)
    return _attention(q, v, query_lengths, key_lengths, causal, window, backward=False)


@register_flop_formula(_triton.jagged_attention_backward, get_raw=True)
def triton_attention_backward_flop(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    q_offsets: Tensor,
    k_offsets: Tensor,
    causal: bool,
    window: int,
    scale: float,
    out_scale: float,
    max_q_len: int,
    max_k_len: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    query_lengths, key_lengths = lengths(q_offsets, max_q_len), lengths(k_offsets, max_k_len)
    return _attention(q, v, query_lengths, key_lengths, causal, window, backward=True)


@register_flop_formula(_native.gdpa_forward, get_raw=True)
def native_gdpa_forward_flop(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    activation: str,
    scale: float,
    window: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    return _gdpa(q, v, lengths(offsets), window, backward=False)


@register_flop_formula(_native.gdpa_backward, get_raw=True)
def native_gdpa_backward_flop(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    activation: str,
    scale: float,
    window: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    return _gdpa(q, v, lengths(offsets), window, backward=True)


@register_flop_formula(_triton.gdpa_forward, get_raw=True)
def triton_gdpa_forward_flop(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    activation: str,
    scale: float,
    window: int,
    max_len: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    return _gdpa(q, v, lengths(offsets, max_len), window, backward=False)


@register_flop_formula(_triton.gdpa_backward, get_raw=True)
def triton_gdpa_backward_flop(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    activation: str,
    scale: float,
    window: int,
    max_len: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    return _gdpa(q, v, lengths(offsets, max_len), window, backward=True)
