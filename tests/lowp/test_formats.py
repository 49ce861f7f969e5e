"""Candidate formats: exact int8 emulation, kernels agree with their emulations, MERE's definition."""

from __future__ import annotations

import pytest
import torch

from fxrec.lowp.error import relative_error
from fxrec.lowp.formats import FORMATS, Int8


def test_int8_rowwise_matches_a_hand_computed_example():
    x = torch.tensor([[1.0, -0.25], [0.1, 0.4]])  # row scales 1/127, 0.4/127 -> q [127, -32], [32, 127]
    w = torch.tensor([[0.25, 1.0], [-2.0, 0.0]])  # channel scales 1/127, 2/127 -> q [32, 127], [-127, 0]
    # int32 sums [[0, -16129], [17153, -4064]] times s_x * s_w:
    expected = torch.tensor([[0.0, -2.0], [17153 * 0.4 / 16129, -4064 * 0.8 / 16129]])
    torch.testing.assert_close(Int8(rowwise=True).emulate(x, w), expected, rtol=1e-6, atol=1e-7)
    # tensorwise: one scale each, 1/127 for x and 2/127 for W -> q_x [[127, -32], [13, 51]], q_w [[16, 64], [-127, 0]]
    acc = torch.tensor(
        [[127 * 16 - 32 * 64, -127 * 127], [13 * 16 + 51 * 64, -13 * 127]], dtype=torch.float32
    )
    torch.testing.assert_close(
        Int8(rowwise=False).emulate(x, w), acc * (1 / 127) * (2 / 127), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("name", [n for n in FORMATS if n.startswith("int8")])
def test_int8_kernel_is_bit_exact_with_its_emulation(name):
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(33, 40, generator=generator), torch.randn(24, 40, generator=generator)
    kernel = FORMATS[name].kernel(w)
    if kernel is None:
        pytest.skip("no int8 kernel on this machine")
    assert torch.equal(kernel(x), FORMATS[name].emulate(x, w))


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_kernel_agrees_with_its_emulation(name):
    generator = torch.Generator().manual_seed(1)
    x, w = torch.randn(32, 48, generator=generator), torch.randn(16, 48, generator=generator)
    kernel = FORMATS[name].kernel(w)
    if kernel is None:
        pytest.skip(f"{name}: emulated only here")
    y = kernel(x)
    emulated = FORMATS[name].emulate(x, w)
    assert y.dtype == torch.float32 and y.shape == (32, 16)
    # bf16/fp16 kernels round their output too; the others differ only in summation order
    assert relative_error(y, emulated) < (1e-2 if name in ("bf16", "fp16") else 1e-5)


def test_all_zero_inputs_quantize_to_zeros():
    x, w = torch.zeros(2, 3), torch.randn(4, 3)
    for fmt in FORMATS.values():
        assert torch.equal(fmt.emulate(x, w), torch.zeros(2, 4)), fmt.name


def test_relative_error_has_a_floor_at_the_output_scale():
    ref = torch.tensor([1.0, -1.0, 0.0, 1.0])
    assert relative_error(ref, ref) == 0.0
    rms = 0.75**0.5
    # 10% off on the three non-zero outputs (each judged against |ref| + eps), the zero one stays 0
    assert relative_error(ref * 1.1, ref) == pytest.approx(0.75 * 0.1 / (1 + 0.01 * rms), rel=1e-5)
    off = torch.tensor([1.0, -1.0, 0.01, 1.0])  # an error at a zero output is judged against 1% of the RMS
    assert relative_error(off, ref) == pytest.approx(0.01 / (0.01 * rms) / 4)
