"""KD with temperature: the soft term is scaled by T^2 so its gradient keeps its size whatever T."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fxrec.data.inputs import LogitInput
from fxrec.transfer.kd import KnowledgeDistillation


def _soft_gradient(temperature: float, vm_logits: torch.Tensor, fm_logits: torch.Tensor, found: torch.Tensor, weight: float = 1.0):
    """d(KD loss)/d(VM logits) (B,) for one task, through the channel's own `loss`."""
    channel = KnowledgeDistillation(8, ["click"], weight=weight, temperature=temperature)
    logits = vm_logits.clone().requires_grad_(True)
    output = SimpleNamespace(logits={"click": logits})
    batch = SimpleNamespace(inputs={"fm_logits": LogitInput({"click": fm_logits}, found)})
    channel.loss(output, batch).backward()
    return logits.grad


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    vm, fm = torch.randn(64, generator=generator) * 2, torch.randn(64, generator=generator) * 2 - 1
    found = (torch.rand(64, generator=generator) > 0.25).float()
    return vm, fm, found


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kd_gradient_is_t_times_the_tempered_probability_gap(logits, temperature):
    """d/dz [w T^2 BCE(z/T, sigmoid(f/T))] = w T (sigmoid(z/T) - sigmoid(f/T)), averaged over found rows."""
    vm, fm, found = logits
    gradient = _soft_gradient(temperature, vm, fm, found, weight=0.5)
    expected = 0.5 * temperature * (torch.sigmoid(vm / temperature) - torch.sigmoid(fm / temperature)) * found / found.sum()
    torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-8)
    assert (gradient[found == 0] == 0).all()  # no FM output for the event: no pull


def test_kd_gradient_size_does_not_depend_on_temperature(logits):
    """To first order in 1/T the gradient is (z - f) / 4 per found row; the error shrinks as 1/T^2."""
    vm, fm, found = logits
    limit = (vm - fm) / 4 * found / found.sum()
    errors = []
    for temperature in (4.0, 8.0, 16.0):
        gradient = _soft_gradient(temperature, vm, fm, found)
        errors.append(float((gradient - limit).norm() / limit.norm()))
    assert errors[0] < 0.1
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3  # second-order: ~4x smaller per doubling
