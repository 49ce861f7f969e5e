"""DHEN: module ensemble, shortcut, token counts per layer."""

from __future__ import annotations

import pytest
import torch

from fxrec.interactions.dhen import DHEN, DHEN_MODULES, GramCross


@pytest.mark.parametrize("module", DHEN_MODULES)
def test_each_module_alone(module: str) -> None:
    dhen = DHEN(num_tokens=5, dim=8, modules=[module], num_layers=1, output_tokens=3)
    assert dhen(torch.randn(2, 5, 8)).shape == (2, 3, 8)


def test_concat_stacks_module_outputs_and_lists_set_tokens_per_layer() -> None:
    dhen = DHEN(
        num_tokens=6,
        dim=8,
        modules=["dot", "linear", "dcn"],
        ensemble="concat",
        num_layers=2,
        output_tokens=[2, 1],
    )
    assert [layer.out_tokens for layer in dhen.layers] == [6, 3]
    assert dhen(torch.randn(2, 6, 8)).shape == (2, 3, 8)
    # concat's default keeps the width from growing k-fold: n // k tokens per module.
    assert DHEN(num_tokens=6, dim=8, modules=["dot", "dcn"], ensemble="concat").num_outputs == 6


def test_shortcut_is_identity_only_when_token_counts_match() -> None:
    same = DHEN(num_tokens=4, dim=8, num_layers=1)
    smaller = DHEN(num_tokens=4, dim=8, num_layers=1, output_tokens=2)
    assert isinstance(same.layers[0].shortcut, torch.nn.Identity)
    assert not isinstance(smaller.layers[0].shortcut, torch.nn.Identity)


def test_gram_cross_is_w_times_channel_gram() -> None:
    cross = GramCross(num_tokens=3, dim=4, out_tokens=2)
    x = torch.randn(5, 3, 4)
    expected = torch.stack([cross.weight @ (x[b].T @ x[b]) / 3 for b in range(5)]) + cross.bias
    torch.testing.assert_close(cross(x), expected)


def test_outputs_are_layer_normalised() -> None:
    out = DHEN(num_tokens=4, dim=8, modules=["dot", "dcn", "conv"], num_layers=3)(torch.randn(3, 4, 8) * 50)
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown DHEN module"):
        DHEN(num_tokens=4, dim=8, modules=["mlp"])
    with pytest.raises(ValueError, match="ensemble"):
        DHEN(num_tokens=4, dim=8, ensemble="max")
    with pytest.raises(ValueError, match="2 entries for 3 layers"):
        DHEN(num_tokens=4, dim=8, num_layers=3, output_tokens=[2, 2])
