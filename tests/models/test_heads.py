"""Multi-task heads: shared-bottom towers and MMoE."""

from __future__ import annotations

import io

import pytest
import torch

from fxrec.models.heads import TaskHeads

TASKS = ["click", "conversion", "like"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("kind", ["shared_bottom", "mmoe"])
def test_one_logit_per_task_and_gradients_everywhere(kind: str) -> None:
    heads = TaskHeads(12, TASKS, kind=kind, hidden=[8], num_experts=3, expert_hidden=[10], bottom_hidden=[16])
    assert heads.tasks == TASKS
    out = heads(torch.randn(6, 12))
    assert list(out) == TASKS and all(logits.shape == (6,) for logits in out.values())
    sum(logits.sum() for logits in out.values()).backward()
    for name, param in heads.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, (
            name
        )


def test_shared_bottom_towers_are_independent() -> None:
    heads = TaskHeads(8, TASKS, hidden=[4])
    x = torch.randn(3, 8)
    before = heads(x)
    with torch.no_grad():
        for param in heads.towers["click"].parameters():
            param.add_(1.0)
    after = heads(x)
    assert not torch.allclose(before["click"], after["click"])
    torch.testing.assert_close(before["conversion"], after["conversion"])


def test_mmoe_gates_are_per_task_distributions() -> None:
    heads = TaskHeads(8, TASKS, kind="mmoe", num_experts=4)
    weights = heads.gate_weights(torch.randn(5, 8))
    for task in TASKS:
        assert weights[task].shape == (5, 4)
        torch.testing.assert_close(weights[task].sum(-1), torch.ones(5))
    assert not torch.allclose(weights["click"], weights["like"])
    with pytest.raises(ValueError, match="mmoe"):
        TaskHeads(8, TASKS).gate_weights(torch.randn(2, 8))


def test_state_dict_round_trip_and_determinism() -> None:
    torch.manual_seed(3)
    source = TaskHeads(8, TASKS, kind="mmoe")
    torch.manual_seed(3)
    twin = TaskHeads(8, TASKS, kind="mmoe")
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target = TaskHeads(8, TASKS, kind="mmoe")
    target.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(4, 8)
    for task in TASKS:
        assert torch.equal(source(x)[task], target(x)[task])
        assert torch.equal(source(x)[task], twin(x)[task])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="distinct task names"):
        TaskHeads(8, ["click", "click"])
    with pytest.raises(ValueError, match="kind"):
        TaskHeads(8, TASKS, kind="ple")
