"""FlopCounterMode counts fxrec's own ops: the analytic count over the real lengths, never the padded one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ops_fixtures import MAX_LEN, RAGGED_LENGTHS, flop_counts, offsets_of
from torch.utils.flop_counter import flop_registry

from fxrec.ops import gdpa, jagged_dense_attention, jagged_self_attention, native
from fxrec.ops.flops import allowed_pairs, lengths
from fxrec.ops.jagged_attention.reference import band_mask

HEADS, DIM, VALUE_DIM = 2, 8, 6  # D != Dv, so a formula that swaps them is caught
KEYS = 12  # GDPA's dense keys per example
MASKS = [(False, None), (True, None), (False, 3), (True, 3), (False, 0)]


def _pairs(query_lengths: list[int], key_lengths: list[int], causal: bool, window: int | None) -> int:
    """Allowed (query, key) pairs, counted one by one from the reference's own mask."""
    return sum(
        int(band_mask(m, n, causal, window, torch.device("cpu")).sum())
        for m, n in zip(query_lengths, key_lengths, strict=True)
    )


def _analytic(pairs: int) -> tuple[int, int]:
    """(forward, backward): two matmuls of 2 * H * pairs * (D or Dv) each, and twice that backward."""
    forward = 2 * HEADS * pairs * (DIM + VALUE_DIM)
    return forward, 2 * forward


def _jagged(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, HEADS, dim, generator=generator).requires_grad_()


@pytest.fixture
def native_kernel() -> None:
    if not native.load():
        pytest.skip("the native kernels could not be built on this machine")


@pytest.mark.parametrize(
    ("query_len", "key_len"), [(0, 0), (0, 5), (1, 1), (7, 7), (7, 3), (3, 12), (24, 24)]
)
@pytest.mark.parametrize(("causal", "window"), MASKS + [(False, 30), (True, 30)])
def test_allowed_pairs_is_the_mask_count(
    query_len: int, key_len: int, causal: bool, window: int | None
) -> None:
    assert allowed_pairs(query_len, key_len, causal, window) == _pairs([query_len], [key_len], causal, window)


@pytest.mark.usefixtures("native_kernel")
@pytest.mark.parametrize(("causal", "window"), MASKS)
def test_self_attention_counts_real_lengths_and_allowed_pairs(causal: bool, window: int | None) -> None:
    generator = torch.Generator().manual_seed(0)
    rows = sum(RAGGED_LENGTHS)
    q, k, v = (
        _jagged(rows, DIM, generator),
        _jagged(rows, DIM, generator),
        _jagged(rows, VALUE_DIM, generator),
    )
    offsets = offsets_of(RAGGED_LENGTHS)

    def run(backend: str) -> tuple[int, int]:
        return flop_counts(
            lambda: jagged_self_attention(
                q, k, v, offsets, MAX_LEN, causal=causal, window=window, backend=backend
            )
        )

    native_count, reference_count = run("cpu"), run("reference")
    assert native_count == _analytic(_pairs(RAGGED_LENGTHS, RAGGED_LENGTHS, causal, window))
    # the reference runs one unpadded sequence at a time and pays for masked pairs: equal without a mask
    assert all(n <= r for n, r in zip(native_count, reference_count, strict=True))
    assert (native_count == reference_count) == (not causal and window is None)


@pytest.mark.usefixtures("native_kernel")
def test_dense_attention_counts_each_history() -> None:
    generator = torch.Generator().manual_seed(1)
    rows, batch, seeds = sum(RAGGED_LENGTHS), len(RAGGED_LENGTHS), 3
    q = torch.randn(batch, seeds, HEADS, DIM, generator=generator).requires_grad_()
    k, v = _jagged(rows, DIM, generator), _jagged(rows, VALUE_DIM, generator)
    offsets = offsets_of(RAGGED_LENGTHS)
    native_count, reference_count = (
        flop_counts(
            lambda backend=backend: jagged_dense_attention(q, k, v, offsets, MAX_LEN, backend=backend)
        )
        for backend in ("cpu", "reference")
    )
    assert native_count == _analytic(_pairs([seeds] * batch, RAGGED_LENGTHS, False, None))
    assert native_count == reference_count


@pytest.mark.usefixtures("native_kernel")
@pytest.mark.parametrize("window", [None, 3, 0])
@pytest.mark.parametrize("batch_lengths", [RAGGED_LENGTHS, [MAX_LEN] * 4], ids=["ragged", "full"])
def test_gdpa_counts_real_lengths_and_window(window: int | None, batch_lengths: list[int]) -> None:
    generator = torch.Generator().manual_seed(2)
    q = _jagged(sum(batch_lengths), DIM, generator)
    k = torch.randn(len(batch_lengths), KEYS, HEADS, DIM, generator=generator).requires_grad_()
    v = torch.randn(len(batch_lengths), KEYS, HEADS, VALUE_DIM, generator=generator).requires_grad_()
    offsets = offsets_of(batch_lengths)
    native_count, reference_count = (
        flop_counts(lambda backend=backend: gdpa(q, k, v, offsets, MAX_LEN, window=window, backend=backend))
        for backend in ("cpu", "reference")
    )
    assert native_count == _analytic(_pairs(batch_lengths, [KEYS] * len(batch_lengths), False, window))
    # the padded einsum reference pays for padding and masked pairs: equal only on a full, unmasked batch
    assert all(n <= r for n, r in zip(native_count, reference_count, strict=True))
    assert (native_count == reference_count) == (window is None and batch_lengths == [MAX_LEN] * 4)


def test_fake_offsets_count_every_sequence_at_the_longest_length() -> None:
    assert lengths(torch.empty(4, dtype=torch.int64, device="meta"), 5) == [5, 5, 5]
    with pytest.raises(ValueError, match="longest length"):
        lengths(torch.empty(4, dtype=torch.int64, device="meta"))


def test_every_fxrec_op_has_a_formula_from_import() -> None:
    names = [
        name
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith(("fxrec_native::", "fxrec_triton::"))
    ]
    assert len(names) == 8
    for name in names:
        namespace, op = name.split("::")
        assert getattr(getattr(torch.ops, namespace), op) in flop_registry, name


@pytest.mark.slow
def test_formulas_are_registered_before_the_kernels_are_built() -> None:
    """A FlopCounterMode copies torch's formula registry when created, and the first op call (which
    builds or loads the native kernels) usually runs inside one: it must count that first call too."""
    if not native.load():  # builds the kernels once, so the fresh process below only loads them
        pytest.skip("the native kernels could not be built on this machine")
    script = (
        "import torch\n"
        "from torch.utils.flop_counter import FlopCounterMode\n"
        "from fxrec.ops import gdpa\n"
        "q, k, v = torch.ones(5, 1, 4), torch.ones(2, 3, 1, 4), torch.ones(2, 3, 1, 4)\n"
        "with FlopCounterMode(display=False) as counter:\n"
        "    gdpa(q, k, v, torch.tensor([0, 2, 5]), 3, backend='cpu')\n"
        "print(counter.get_total_flops())\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root
    )
    assert int(result.stdout.split()[-1]) == 2 * 5 * 3 * (4 + 4)  # 5 rows x 3 keys, one head, D = Dv = 4
