"""The triton backend matches the reference, run on CPU by Triton's interpreter (tiny shapes: it is slow)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # also set by conftest.py, before torch imports triton

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

import torch  # noqa: E402
from ops_fixtures import assert_close_all, flop_counts, grads, offsets_of  # noqa: E402

from fxrec.ops import gdpa, jagged_dense_attention, jagged_self_attention  # noqa: E402
from fxrec.ops.flops import attention_flops  # noqa: E402

if not torch.cuda.is_available() and not isinstance(triton.language.sigmoid, triton.runtime.interpreter.InterpretedFunction):
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (set it before the first `import torch`, "
                "e.g. in tests/conftest.py)", allow_module_level=True)

LENGTHS = [0, 1, 5, 18, 0, 3]  # 18 spans two 16-row blocks
MAX_LEN = 18


def _jagged(heads: int, dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(sum(LENGTHS), heads, dim, generator=generator).requires_grad_() for _ in range(3))


def _compare(fn, inputs, atol: float = 2e-5):
    results = []
    for backend in ("triton", "reference"):
        out = fn(*inputs, backend=backend)
        results.append((out, *grads(out, inputs)))
    assert_close_all(*results, atol=atol, rtol=1e-4)


@pytest.mark.parametrize(
    ("causal", "window", "normalize"), [(False, None, "softmax"), (True, None, "max_len"), (False, 3, "softmax")]
)
def test_triton_self_attention(causal: bool, window: int | None, normalize: str) -> None:
    offsets = offsets_of(LENGTHS)
    _compare(lambda q, k, v, backend: jagged_self_attention(q, k, v, offsets, MAX_LEN, causal=causal, window=window,
                                                            normalize=normalize, backend=backend),
             _jagged(heads=2, dim=8, seed=0))


def test_triton_dense_attention() -> None:
    offsets = offsets_of(LENGTHS)
    queries = torch.randn(len(LENGTHS), 2, 2, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
    k, v = _jagged(heads=2, dim=8, seed=2)[:2]
    _compare(lambda q, k, v, backend: jagged_dense_attention(q, k, v, offsets, MAX_LEN, backend=backend),
             (queries, k, v))


@pytest.mark.parametrize(
    ("activation", "window"), [("gelu", None), ("silu", 2), ("relu", None), ("relu2", 2), ("raw", None)]
)
def test_triton_gdpa(activation: str, window: int | None) -> None:
    offsets = offsets_of(LENGTHS)
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(sum(LENGTHS), 2, 8, generator=generator).requires_grad_()
    k, v = (torch.randn(len(LENGTHS), 20, 2, 8, generator=generator).requires_grad_() for _ in range(2))
    _compare(lambda q, k, v, backend: gdpa(q, k, v, offsets, MAX_LEN, activation=activation, window=window,
                                           backend=backend), (q, k, v))


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, 5])
def test_triton_self_attention_full_matrix_and_head_dim_not_power_of_two(causal: bool, window: int | None) -> None:
    offsets = offsets_of(LENGTHS)
    _compare(lambda q, k, v, backend: jagged_self_attention(q, k, v, offsets, MAX_LEN, causal=causal, window=window,
                                                            backend=backend),
             _jagged(heads=1, dim=12, seed=4))


@pytest.mark.parametrize(("causal", "window"), [(False, None), (True, 3)])
def test_triton_self_attention_flops_count_real_lengths(causal: bool, window: int | None) -> None:
    """FlopCounterMode sees the Triton kernels (as torch.ops.fxrec_triton.*) and counts the allowed pairs of
    the real lengths, as for the native kernels."""
    offsets = offsets_of(LENGTHS)
    counts = flop_counts(lambda: jagged_self_attention(*_jagged(heads=2, dim=8, seed=5), offsets, MAX_LEN,
                                                       causal=causal, window=window, backend="triton"))
    assert counts == tuple(attention_flops(LENGTHS, LENGTHS, 2, 8, 8, causal, window, backward=b) for b in (False, True))
    assert counts[0] > 0


def test_triton_gdpa_flops_count_real_lengths() -> None:
    offsets = offsets_of(LENGTHS)
    generator = torch.Generator().manual_seed(6)
    q = torch.randn(sum(LENGTHS), 2, 8, generator=generator).requires_grad_()
    k, v = (torch.randn(len(LENGTHS), 20, 2, 8, generator=generator).requires_grad_() for _ in range(2))
    counts = flop_counts(lambda: gdpa(q, k, v, offsets, MAX_LEN, window=2, backend="triton"))
    keys = [20] * len(LENGTHS)
    assert counts == tuple(attention_flops(LENGTHS, keys, 2, 8, 8, False, 2, backward=b) for b in (False, True))
    assert counts[0] > 0
