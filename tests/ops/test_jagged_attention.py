"""The cpu backend of jagged self-attention and jagged-dense attention matches the reference, with both of
its kernels (the native C++ one and the bucketed flash fallback)."""

from __future__ import annotations

import pytest
import torch
from ops_fixtures import MAX_LEN, RAGGED_LENGTHS, assert_close_all, grads, offsets_of

from fxrec.ops import (
    Backend,
    jagged_dense_attention,
    jagged_self_attention,
    resolve_backend,
    sliding_window_attention,
)

pytestmark = pytest.mark.usefixtures("cpu_kernel")


def _inputs(lengths: list[int], heads: int, dim: int, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    rows = sum(lengths)
    return tuple(
        torch.randn(rows, heads, dim, generator=generator).to(dtype).requires_grad_() for _ in range(3)
    )


def _run_self(backend: str, q, k, v, offsets, **kwargs):
    out = jagged_self_attention(q, k, v, offsets, MAX_LEN, backend=backend, **kwargs)
    return (out, *grads(out, (q, k, v)))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("normalize", ["softmax", "max_len"])
def test_cpu_self_attention_matches_reference_fp32(causal: bool, window: int | None, normalize: str) -> None:
    q, k, v = _inputs(RAGGED_LENGTHS, heads=2, dim=16, dtype=torch.float32)
    offsets = offsets_of(RAGGED_LENGTHS)
    kwargs = dict(causal=causal, window=window, normalize=normalize)
    assert_close_all(
        _run_self("cpu", q, k, v, offsets, **kwargs),
        _run_self("reference", q, k, v, offsets, **kwargs),
        atol=2e-5,
        rtol=1e-4,
    )


def test_cpu_self_attention_matches_reference_bf16() -> None:
    q, k, v = _inputs(RAGGED_LENGTHS, heads=2, dim=32, dtype=torch.bfloat16)
    offsets = offsets_of(RAGGED_LENGTHS)
    assert_close_all(
        _run_self("cpu", q, k, v, offsets, causal=True),
        _run_self("reference", q, k, v, offsets, causal=True),
        atol=6e-2,
        rtol=5e-2,
    )


def test_uniform_lengths_and_many_buckets_match_reference() -> None:
    """The contiguous fast path (all lengths equal) and a batch split over many chunks are both exact."""
    for lengths in (
        [16] * 5,
        [int(x) for x in torch.randint(0, MAX_LEN + 1, (40,), generator=torch.Generator().manual_seed(3))],
    ):
        q, k, v = _inputs(lengths, heads=1, dim=8, dtype=torch.float32, seed=1)
        offsets = offsets_of(lengths)
        assert_close_all(
            _run_self("cpu", q, k, v, offsets), _run_self("reference", q, k, v, offsets), atol=2e-5, rtol=1e-4
        )


def test_empty_batch_and_single_tokens() -> None:
    for lengths in ([0, 0], [1, 1, 1]):
        q, k, v = _inputs(lengths, heads=2, dim=4, dtype=torch.float32)
        out = jagged_self_attention(q, k, v, offsets_of(lengths), MAX_LEN, backend="cpu")
        assert out.shape == (sum(lengths), 2, 4)
        # a length-1 sequence attends only to itself, so the output is its own value
        torch.testing.assert_close(out, v.detach())


def test_two_dimensional_inputs_and_sliding_window_alias() -> None:
    offsets = offsets_of(RAGGED_LENGTHS)
    q, k, v = (x[:, 0] for x in _inputs(RAGGED_LENGTHS, heads=1, dim=8, dtype=torch.float32))
    out = sliding_window_attention(q, k, v, offsets, MAX_LEN, window=2, backend="cpu")
    expected = jagged_self_attention(q, k, v, offsets, MAX_LEN, window=2, backend="reference")
    assert out.shape == (sum(RAGGED_LENGTHS), 8)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("normalize", ["softmax", "max_len"])
def test_cpu_dense_attention_matches_reference(normalize: str) -> None:
    generator = torch.Generator().manual_seed(0)
    batch = len(RAGGED_LENGTHS)
    # shared seeds expanded over the batch, the PMA / HSP use
    seeds = torch.randn(1, 3, 2, 16, generator=generator).requires_grad_()
    k, v = _inputs(RAGGED_LENGTHS, heads=2, dim=16, dtype=torch.float32)[:2]
    offsets = offsets_of(RAGGED_LENGTHS)
    results = []
    for backend in ("cpu", "reference"):
        out = jagged_dense_attention(
            seeds.expand(batch, -1, -1, -1), k, v, offsets, MAX_LEN, normalize=normalize, backend=backend
        )
        results.append((out, *grads(out, (seeds, k, v))))
    assert_close_all(*results, atol=2e-5, rtol=1e-4)
    assert results[0][0].shape == (batch, 3, 2, 16)
    assert results[0][0][0].abs().sum() == 0  # example 0 has an empty history


def test_max_len_normalisation_matches_fbgemm_sll() -> None:
    """normalize="max_len", scale=1 is FBGEMM SLL's jagged flash attention (single head, no mask)."""
    pytest.importorskip("fbgemm_gpu")
    import fbgemm_gpu.sll  # noqa: F401  registers torch.ops.fbgemm.sll_*

    lengths = [3, 0, 8, 1, 5]
    q, k, v = (x[:, 0] for x in _inputs(lengths, heads=1, dim=8, dtype=torch.float32))
    offsets = offsets_of(lengths)
    expected = torch.ops.fbgemm.sll_jagged_flash_attention_basic(q, k, v, offsets, 8)
    out = jagged_self_attention(q, k, v, offsets, 8, scale=1.0, normalize="max_len", backend="cpu")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_bad_inputs_get_specific_errors() -> None:
    q, k, v = _inputs([2, 3], heads=1, dim=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="max_len"):
        jagged_self_attention(q, k, v, offsets_of([2, 3]), 2)
    with pytest.raises(ValueError, match="offsets must run"):
        jagged_self_attention(q, k, v, offsets_of([2, 2]), 4)
    with pytest.raises(ValueError, match="normalize"):
        jagged_self_attention(q, k, v, offsets_of([2, 3]), 4, normalize="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown backend"):
        jagged_self_attention(q, k, v, offsets_of([2, 3]), 4, backend="cuda")


def test_auto_backend_resolution() -> None:
    assert resolve_backend("auto", torch.device("cpu")) is Backend.CPU
    assert resolve_backend("auto", torch.device("cuda")) is Backend.TRITON
    assert resolve_backend(Backend.REFERENCE, torch.device("cpu")) is Backend.REFERENCE


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [0, 5, 20])
def test_banded_sliding_window_matches_reference(causal: bool, window: int) -> None:
    """Long sequences next to the window take the banded path (query blocks over key bands); still exact."""
    lengths = [0, 150, 1, 97, 150, 33, 64, 0, 129]
    q, k, v = _inputs(lengths, heads=2, dim=8, dtype=torch.float32, seed=2)
    offsets = offsets_of(lengths)
    results = []
    for backend in ("cpu", "reference"):
        out = jagged_self_attention(q, k, v, offsets, 150, causal=causal, window=window, backend=backend)
        results.append((out, *grads(out, (q, k, v))))
    assert_close_all(*results, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_short_sequences_split_into_backward_pieces_match_reference(
    causal: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many short sequences with tiny chunk budgets: every bucket is cut into several forward chunks and
    backward pieces (padded, full-length non-consecutive, and contiguous ones); still exact."""
    from fxrec.ops import JaggedPlan
    from fxrec.ops.jagged_attention import cpu

    monkeypatch.setattr(cpu, "MIN_CHUNK_BYTES", 64)
    monkeypatch.setattr(cpu, "FORWARD_PARTS", 4)
    monkeypatch.setattr(cpu, "BACKWARD_PARTS", 16)
    generator = torch.Generator().manual_seed(5)
    lengths = [int(x) for x in torch.randint(0, 13, (40,), generator=generator)]
    lengths[10:16] = [20] * 6  # the longest bucket: a contiguous full-length run ...
    lengths[30], lengths[35] = 20, 20  # ... and full-length members that are not consecutive
    lengths[0], lengths[1] = 0, 1
    q, k, v = _inputs(lengths, heads=2, dim=8, dtype=dtype, seed=4)
    offsets = offsets_of(lengths)
    tolerance = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=6e-2, rtol=5e-2)
    assert_close_all(
        _run_self("cpu", q, k, v, offsets, causal=causal),
        _run_self("reference", q, k, v, offsets, causal=causal),
        **tolerance,
    )
    # the split paths really ran: several chunks per bucket and several backward pieces per chunk
    row_bytes = 2 * 8 * q.element_size()
    jagged_bytes = sum(lengths) * row_bytes
    chunks = JaggedPlan(offsets).chunks(
        quadratic=True,
        row_bytes=row_bytes,
        call_overhead=cpu.CALL_OVERHEAD / 2,
        chunk_bytes=max(cpu.MIN_CHUNK_BYTES, jagged_bytes // cpu.FORWARD_PARTS),
    )
    layouts = [cpu._layout(chunk, 0, causal, None, dtype) for chunk in chunks]
    pieces = [
        part for layout in layouts for part, _ in layout.parts(jagged_bytes // cpu.BACKWARD_PARTS, row_bytes)
    ]
    assert len(pieces) > len(chunks) > len({chunk.padded_len for chunk in chunks})
    assert any(piece.chunk.contiguous is not None for piece in pieces)
    assert any(not piece.chunk.has_padding and piece.chunk.contiguous is None for piece in pieces)


def test_non_contiguous_inputs_match_reference() -> None:
    """q, k, v as strided views of one fused projection (the sequence arches' layout)."""
    lengths = RAGGED_LENGTHS
    generator = torch.Generator().manual_seed(6)
    fused = torch.randn(sum(lengths), 3, 2, 8, generator=generator).requires_grad_()
    q, k, v = fused.unbind(1)
    offsets = offsets_of(lengths)
    results = []
    for backend in ("cpu", "reference"):
        out = jagged_self_attention(q, k, v, offsets, MAX_LEN, backend=backend)
        results.append((out, *grads(out, (fused,))))
    for actual, expected in zip(*results, strict=True):
        torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-4)
