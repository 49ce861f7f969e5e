"""DOT: pairwise products projected back to tokens, inputs kept in front."""

from __future__ import annotations

import pytest
import torch

from fxrec.interactions.dot import DOT, pairwise_dot_products


def test_keeps_inputs_and_appends_projected_products() -> None:
    dot = DOT(num_tokens=4, dim=8, output_tokens=2)
    tokens = torch.randn(3, 4, 8)
    out = dot(tokens)
    assert out.shape == (3, 6, 8) and dot.num_outputs == 6
    assert torch.equal(out[:, :4], tokens)


def test_pairwise_products_are_the_upper_triangle() -> None:
    tokens = torch.randn(2, 3, 4)
    rows, cols = torch.triu_indices(3, 3, offset=1)
    products = pairwise_dot_products(tokens, rows, cols)
    expected = torch.stack(
        [(tokens[:, i] * tokens[:, j]).sum(-1) / 2.0 for i, j in [(0, 1), (0, 2), (1, 2)]], dim=1
    )
    torch.testing.assert_close(products, expected)


def test_projection_depends_only_on_the_products() -> None:
    """Rotating every token by the same orthogonal map keeps all dot products, hence the output."""
    dot = DOT(num_tokens=4, dim=8, output_tokens=3, keep_inputs=False)
    tokens = torch.randn(2, 4, 8)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    torch.testing.assert_close(dot(tokens @ rotation), dot(tokens), atol=1e-5, rtol=1e-5)


def test_rejects_a_single_token() -> None:
    with pytest.raises(ValueError, match="at least two tokens"):
        DOT(num_tokens=1, dim=4)
    assert DOT(num_tokens=1, dim=4, self_interaction=True)(torch.randn(2, 1, 4)).shape == (2, 2, 4)
