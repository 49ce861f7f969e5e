"""The bucketed jagged kernels match plain per-example references, forward and backward."""

from __future__ import annotations

import pytest
import torch

from fxrec.interactions.attention import (
    GDPA_ACTIVATIONS,
    gdpa,
    jagged_dense_attention,
    jagged_self_attention,
    reference_dense_attention,
    reference_gdpa,
    reference_self_attention,
    use_fxrec_ops,
)
from fxrec.interactions.jagged import JaggedPlan

HEADS, HEAD_DIM = 2, 8
LENGTH_SETS = {
    "ragged": [0, 1, 3, 17, 40, 5],
    "all-empty": [0, 0, 0],
    "ones": [1, 1],
    "long": [70, 2],
}


def offsets_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.long)


def jagged_qkv(lengths: list[int]) -> tuple[torch.Tensor, ...]:
    total = sum(lengths)
    return tuple(torch.randn(total, HEADS, HEAD_DIM, requires_grad=True) for _ in range(3))


def grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    return list(torch.autograd.grad((out * weight).sum(), inputs, allow_unused=True))


def assert_same(fast: torch.Tensor, ref: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> None:
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)
    if fast.numel() and fast.requires_grad:  # an all-empty batch has nothing to differentiate
        for g_fast, g_ref in zip(grads(fast, inputs), grads(ref, inputs), strict=True):
            torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lengths", LENGTH_SETS.values(), ids=LENGTH_SETS.keys())
@pytest.mark.parametrize("window", [None, 0, 4])
def test_self_attention_matches_reference(lengths: list[int], window: int | None) -> None:
    q, k, v = jagged_qkv(lengths)
    offsets = offsets_of(lengths)
    fast = jagged_self_attention(q, k, v, JaggedPlan.from_offsets(offsets), window=window)
    assert_same(fast, reference_self_attention(q, k, v, offsets, window=window), (q, k, v))


@pytest.mark.parametrize("lengths", LENGTH_SETS.values(), ids=LENGTH_SETS.keys())
def test_dense_attention_matches_reference(lengths: list[int]) -> None:
    _, k, v = jagged_qkv(lengths)
    q = torch.randn(len(lengths), 3, HEADS, HEAD_DIM, requires_grad=True)
    offsets = offsets_of(lengths)
    fast = jagged_dense_attention(q, k, v, JaggedPlan.from_offsets(offsets))
    assert_same(fast, reference_dense_attention(q, k, v, offsets), (q, k, v))
    empty = torch.tensor(lengths) == 0
    assert torch.all(fast[empty] == 0), "an empty history must pool to zeros"


@pytest.mark.parametrize("lengths", LENGTH_SETS.values(), ids=LENGTH_SETS.keys())
@pytest.mark.parametrize("activation", sorted(GDPA_ACTIVATIONS))
def test_gdpa_matches_reference(lengths: list[int], activation: str) -> None:
    q, _, _ = jagged_qkv(lengths)
    k = torch.randn(len(lengths), 6, HEADS, HEAD_DIM, requires_grad=True)
    v = torch.randn(len(lengths), 6, HEADS, HEAD_DIM, requires_grad=True)
    offsets = offsets_of(lengths)
    fast = gdpa(q, k, v, JaggedPlan.from_offsets(offsets), activation=activation, scale=0.25)
    assert_same(fast, reference_gdpa(q, k, v, offsets, activation=activation, scale=0.25), (q, k, v))


def test_gdpa_is_an_unnormalised_personal_ffn() -> None:
    """One entry, one head: GDPA equals scale * V^T act(K q), a 2-layer FFN with per-example weights."""
    q = torch.randn(1, 1, 4)
    k, v = torch.randn(1, 5, 1, 4), torch.randn(1, 5, 1, 4)
    out = gdpa(q, k, v, JaggedPlan.from_offsets(torch.tensor([0, 1])), activation="relu", scale=0.5)
    expected = 0.5 * v[0, :, 0].T @ torch.relu(k[0, :, 0] @ q[0, 0])
    torch.testing.assert_close(out[0, 0], expected)


def test_buckets_never_pad_to_the_batch_max() -> None:
    lengths = [0, 1, 2, 3, 30, 100, 0, 9]
    plan = JaggedPlan.from_offsets(offsets_of(lengths), min_bucket=4)
    covered = torch.cat([b.rows for b in plan.buckets]).sort().values
    assert covered.tolist() == [i for i, n in enumerate(lengths) if n > 0], "empty rows belong to no bucket"
    for bucket in plan.buckets:
        shortest = int(bucket.mask.sum(1).min())
        assert bucket.mask.shape[1] < max(2 * shortest, 4), "padding stays within a power-of-two bucket"
    assert max(b.mask.shape[1] for b in plan.buckets if 1 in b.rows.tolist()) < 100


@pytest.fixture
def ops_kernels():
    """Route the interaction kernels to fxrec.ops for one test; skip if it is not there yet."""
    if not use_fxrec_ops(True):
        use_fxrec_ops(False)
        pytest.skip("fxrec.ops kernels not available")
    yield
    use_fxrec_ops(False)


def test_fxrec_ops_switch_matches_the_local_path(ops_kernels: None) -> None:
    lengths = LENGTH_SETS["ragged"]
    q, k, v = jagged_qkv(lengths)
    offsets = offsets_of(lengths)
    plan = JaggedPlan.from_offsets(offsets)
    dense_q = torch.randn(len(lengths), 3, HEADS, HEAD_DIM)
    weights_k, weights_v = torch.randn(2, len(lengths), 6, HEADS, HEAD_DIM).unbind(0)
    with torch.no_grad():
        via_ops = [
            jagged_self_attention(q, k, v, plan, window=4),
            jagged_dense_attention(dense_q, k, v, plan),
            gdpa(q, weights_k, weights_v, plan, activation="gelu", scale=0.1),
        ]
        use_fxrec_ops(False)
        local = [
            jagged_self_attention(q, k, v, plan, window=4),
            jagged_dense_attention(dense_q, k, v, plan),
            gdpa(q, weights_k, weights_v, plan, activation="gelu", scale=0.1),
        ]
    for a, b in zip(via_ops, local, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
