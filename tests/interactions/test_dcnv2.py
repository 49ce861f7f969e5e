"""DCNv2: the cross layer is x0 * (W x + b) + x, low-rank (W = U V) or full-rank."""

from __future__ import annotations

import torch

from fxrec.interactions.dcnv2 import DCNv2


def test_full_rank_cross_matches_its_formula() -> None:
    torch.manual_seed(0)
    dcn = DCNv2(num_tokens=3, dim=4, num_layers=1, low_rank=None)
    tokens = torch.randn(5, 3, 4)
    x0 = tokens.reshape(5, 12)
    up = dcn.cross.up[0]
    assert up.weight.shape == (12, 12)
    torch.testing.assert_close(dcn(tokens).reshape(5, 12), x0 * (x0 @ up.weight.T + up.bias) + x0)


def test_low_rank_cross_is_a_rank_r_product() -> None:
    torch.manual_seed(0)
    dcn = DCNv2(num_tokens=3, dim=4, num_layers=1, low_rank=2)
    tokens = torch.randn(5, 3, 4)
    x0 = tokens.reshape(5, 12)
    weight = dcn.cross.up[0].weight @ dcn.cross.down[0].weight  # (12, 12), rank <= 2
    assert torch.linalg.matrix_rank(weight) <= 2
    torch.testing.assert_close(dcn(tokens).reshape(5, 12), x0 * (x0 @ weight.T + dcn.cross.up[0].bias) + x0)
