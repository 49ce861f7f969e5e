"""The cpu backend of GDPA matches the einsum reference."""

from __future__ import annotations

import pytest
import torch
from ops_fixtures import MAX_LEN, RAGGED_LENGTHS, assert_close_all, grads, offsets_of

from fxrec.ops import gdpa

pytestmark = pytest.mark.usefixtures("cpu_kernel")

KEYS = 12


def _inputs(dtype: torch.dtype, heads: int = 2, dim: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batch, rows = len(RAGGED_LENGTHS), sum(RAGGED_LENGTHS)
    q = torch.randn(rows, heads, dim, generator=generator)
    k, v = (torch.randn(batch, KEYS, heads, dim, generator=generator) for _ in range(2))
    return tuple(x.to(dtype).requires_grad_() for x in (q, k, v))


def _run(backend: str, q, k, v, **kwargs):
    out = gdpa(q, k, v, offsets_of(RAGGED_LENGTHS), MAX_LEN, backend=backend, **kwargs)
    return (out, *grads(out, (q, k, v)))


@pytest.mark.parametrize("activation", ["gelu", "silu", "relu", "relu2", "raw"])
@pytest.mark.parametrize("window", [None, 3])
def test_cpu_gdpa_matches_reference_fp32(activation: str, window: int | None) -> None:
    q, k, v = _inputs(torch.float32)
    kwargs = dict(activation=activation, window=window)
    assert_close_all(
        _run("cpu", q, k, v, **kwargs), _run("reference", q, k, v, **kwargs), atol=2e-5, rtol=1e-4
    )


def test_cpu_gdpa_matches_reference_bf16() -> None:
    q, k, v = _inputs(torch.bfloat16, dim=32)
    assert_close_all(
        _run("cpu", q, k, v, activation="silu"),
        _run("reference", q, k, v, activation="silu"),
        atol=5e-2,
        rtol=5e-2,
    )


def test_gdpa_is_a_personalised_ffn() -> None:
    """One token, one head: scale * act(q k^T) v is W2 act(W1^T q) / max_len with per-example weights."""
    q = torch.randn(1, 1, 4)
    k, v = torch.randn(1, 6, 1, 4), torch.randn(1, 6, 1, 4)
    out = gdpa(q, k, v, offsets_of([1]), 5, activation="relu")
    expected = torch.relu(q[0, 0] @ k[0, :, 0].T) @ v[0, :, 0] / 5
    torch.testing.assert_close(out[0, 0], expected)


def test_gdpa_shapes_and_errors() -> None:
    q, k, v = (x.detach() for x in _inputs(torch.float32, heads=1))
    out = gdpa(q[:, 0], k[:, :, 0], v[:, :, 0], offsets_of(RAGGED_LENGTHS), MAX_LEN, activation="gelu")
    assert out.shape == (sum(RAGGED_LENGTHS), 16)
    with pytest.raises(ValueError, match="activation"):
        gdpa(q, k, v, offsets_of(RAGGED_LENGTHS), MAX_LEN, activation="softmax")
    with pytest.raises(ValueError, match="k, v must be"):
        gdpa(q, k[:-1], v[:-1], offsets_of(RAGGED_LENGTHS), MAX_LEN)


@pytest.mark.parametrize("window", [None, 5])
def test_many_short_sequences_over_several_buckets_match_reference(window: int | None, cpu_kernel: str) -> None:
    """Wide rows make a length bucket cheap next to its padding, so the flash path spreads short histories
    over many buckets and chunks (with empty examples, whose key/value gradients must be exactly 0)."""
    from fxrec.ops import JaggedPlan
    from fxrec.ops.gdpa_kernels import cpu

    generator = torch.Generator().manual_seed(7)
    lengths = [int(x) for x in torch.randint(0, 41, (30,), generator=generator)]
    lengths[3] = lengths[17] = 0
    heads, dim, keys = 4, 64, 64
    q = torch.randn(sum(lengths), heads, dim, generator=generator).requires_grad_()
    k, v = (
        torch.randn(len(lengths), keys, heads, dim, generator=generator).div_(8).requires_grad_()
        for _ in range(2)
    )
    offsets = offsets_of(lengths)
    results = []
    for backend in ("cpu", "reference"):
        out = gdpa(q, k, v, offsets, 40, activation="gelu", window=window, backend=backend)
        results.append((out, *grads(out, (q, k, v))))
    assert_close_all(*results, atol=2e-5, rtol=1e-4)
    assert results[0][2][3].abs().sum() == 0 and results[0][3][17].abs().sum() == 0
    if cpu_kernel == "native":
        return  # the native kernel plans no buckets
    gdpa(q.detach(), k.detach(), v.detach(), plan := JaggedPlan(offsets), 40, activation="gelu")
    assert len({chunk.padded_len for chunk in next(iter(plan._chunks.values()))}) > 2, "several buckets"
    assert cpu._call_overhead(heads, dim, keys) < 64
