"""The one place where the sequence-aware interactions call attention kernels.

Three jagged kernels, all over heads-split tensors (rows, H, dh):

- `jagged_self_attention`: softmax attention within each example, optional sliding window;
- `jagged_dense_attention`: a few dense queries per example (PMA / HSP seeds) over its jagged history;
- `gdpa`: generalized dot-product attention `scale * act(Q K^T) V`, no softmax, Q jagged and K, V short
  per-example "weight tokens" (Kunlun's personalized FFN).

By default each runs per length bucket (`JaggedPlan`) with plain PyTorch (SDPA / batched matmul):
padding stays within a bucket, never to the batch max, and empty histories are skipped.
`use_fxrec_ops(True)` routes all three to the `fxrec.ops` kernels instead (same semantics; the parity
test checks it). This file is the only place that decides. `reference_*` are the obvious per-example
loops the tests compare against.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fxrec.interactions.jagged import JaggedPlan

# name -> fxrec.ops function, filled by use_fxrec_ops(True); empty means the local bucketed path.
_OPS: dict[str, Callable[..., torch.Tensor]] = {}
_OPS_GDPA_ACTIVATIONS = ("gelu", "silu", "relu")


def use_fxrec_ops(enabled: bool = True) -> bool:
    """Switch the three kernels to `fxrec.ops` (or back); returns whether the ops kernels are in use.

    Falls back to the local path, returning False, when `fxrec.ops` is missing or incomplete.
    """
    _OPS.clear()
    if not enabled:
        return False
    try:
        ops = importlib.import_module("fxrec.ops")
    except ImportError:
        return False
    found = {
        name: getattr(ops, name, None) for name in ("jagged_self_attention", "jagged_dense_attention", "gdpa")
    }
    # Only plain functions count (a subpackage named like an op is not the op).
    if all(callable(fn) and not isinstance(fn, type(ops)) for fn in found.values()):
        _OPS.update(found)  # type: ignore[arg-type]
    return bool(_OPS)


def _max_len(plan: JaggedPlan) -> int:
    return max(int(plan.lengths.max()), 1) if plan.batch_size else 1


GDPA_ACTIVATIONS = {
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
    "raw": lambda x: x,
}


def _window_mask(length: int, window: int, device: torch.device) -> torch.Tensor:
    slots = torch.arange(length, device=device)
    return (slots[:, None] - slots[None, :]).abs() <= window


def jagged_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: JaggedPlan, window: int | None = None
) -> torch.Tensor:
    """Softmax attention within each example. q, k, v: (N, H, dh) -> (N, H, dh).

    With `window`, entry i sees entries j of its example with |i - j| <= window (bidirectional: the whole
    history is already in the past of the ranked event, so there is no causal constraint).
    """
    if _OPS:
        return _OPS["jagged_self_attention"](q, k, v, plan.offsets, _max_len(plan), window=window)
    parts = []
    for bucket in plan.buckets:
        # Padded slots hold row 0; masks keep them out of every real row's result.
        qb, kb, vb = (plan.gather(t, bucket).transpose(1, 2) for t in (q, k, v))  # (Bb, H, Lb, dh)
        mask = bucket.mask[:, None, None, :]  # keys that exist
        if window is not None:
            # Padded query rows may see every real key, so no row is fully masked (NaN-free backward);
            # their outputs are dropped by unpad anyway.
            local = _window_mask(qb.shape[2], window, q.device)[None, None]
            mask = mask & (local | ~bucket.mask[:, None, :, None])
        parts.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask).transpose(1, 2))
    return plan.unpad(parts, like=q)


def jagged_dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: JaggedPlan
) -> torch.Tensor:
    """Dense queries over each example's jagged keys. q: (B, m, H, dh); k, v: (N, H, dh) -> (B, m, H, dh).

    Examples with an empty history get zeros (there is nothing to attend to).
    """
    if _OPS:
        return _OPS["jagged_dense_attention"](q, k, v, plan.offsets, _max_len(plan))
    out = q.new_zeros(q.shape)
    for bucket in plan.buckets:
        qb = q[bucket.rows].transpose(1, 2)  # (Bb, H, m, dh)
        kb, vb = (plan.gather(t, bucket).transpose(1, 2) for t in (k, v))  # (Bb, H, Lb, dh)
        ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bucket.mask[:, None, None, :])
        out = out.index_copy(0, bucket.rows, ob.transpose(1, 2))
    return out


def gdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: JaggedPlan,
    activation: str = "silu",
    scale: float = 1.0,
) -> torch.Tensor:
    """Generalized dot-product attention: out_i = scale * act(q_i K_b^T) V_b for entry i of example b.

    q: (N, H, dh) jagged; k, v: (B, F, H, dh) per-example weight tokens (F = the FFN hidden size).
    No softmax, so each row is an FFN `V^T act(K q)` whose weights depend on the example.
    """
    if _OPS and activation in _OPS_GDPA_ACTIVATIONS:
        return _OPS["gdpa"](q, k, v, plan.offsets, _max_len(plan), activation=activation, scale=scale)
    act = GDPA_ACTIVATIONS[activation]
    parts = []
    for bucket in plan.buckets:
        qb = plan.gather(q, bucket).transpose(1, 2)  # (Bb, H, Lb, dh); padded rows are dropped
        kb = k[bucket.rows].permute(0, 2, 3, 1)  # (Bb, H, dh, F)
        vb = v[bucket.rows].transpose(1, 2)  # (Bb, H, F, dh)
        parts.append((act(qb @ kb) * scale @ vb).transpose(1, 2))
    return plan.unpad(parts, like=q)


# ---- plain references (per-example loops), for parity tests ------------------------------------------


def reference_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    out = torch.zeros_like(q)
    for b in range(offsets.numel() - 1):
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        if hi == lo:
            continue
        qs, ks, vs = (t[lo:hi].transpose(0, 1) for t in (q, k, v))  # (H, L, dh)
        scores = qs @ ks.transpose(-1, -2) / q.shape[-1] ** 0.5
        if window is not None:
            scores = scores.masked_fill(~_window_mask(hi - lo, window, q.device), float("-inf"))
        out[lo:hi] = (scores.softmax(-1) @ vs).transpose(0, 1)
    return out


def reference_dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    out = torch.zeros_like(q)
    for b in range(offsets.numel() - 1):
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        if hi == lo:
            continue
        qs = q[b].transpose(0, 1)  # (H, m, dh)
        ks, vs = (t[lo:hi].transpose(0, 1) for t in (k, v))
        scores = qs @ ks.transpose(-1, -2) / q.shape[-1] ** 0.5
        out[b] = (scores.softmax(-1) @ vs).transpose(0, 1)
    return out


def reference_gdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    activation: str = "silu",
    scale: float = 1.0,
) -> torch.Tensor:
    act = GDPA_ACTIVATIONS[activation]
    out = torch.zeros_like(q)
    for b in range(offsets.numel() - 1):
        lo, hi = int(offsets[b]), int(offsets[b + 1])
        scores = torch.einsum("lhd,fhd->hlf", q[lo:hi], k[b])
        out[lo:hi] = torch.einsum("hlf,fhd->lhd", act(scores) * scale, v[b])
    return out
