"""Hierarchical Seed Pooling in both forms against a hand-written reference, on jagged histories."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from fxrec.interactions.pooling import HierarchicalSeedPooling
from fxrec.interactions.registry import build_interaction
from fxrec.ops import JaggedPlan

DIM, HEADS, OUTPUTS, MULTIPLIER, RANK = 8, 2, 2, 3, 2
LENGTHS = [2, 0, 3, 0, 1]  # zero-length histories in the middle and between non-empty ones


def _hsp(residual: bool) -> HierarchicalSeedPooling:
    torch.manual_seed(0)
    hsp = HierarchicalSeedPooling(DIM, OUTPUTS, HEADS, MULTIPLIER, RANK, residual=residual)
    with torch.no_grad():  # non-trivial norm affine and biases, so the reference must use them
        for p in (hsp.seed_norm.weight, hsp.seed_norm.bias, hsp.compress.bias, hsp.attend.out.bias):
            p.copy_(torch.randn_like(p))
    return hsp


def _reference(hsp: HierarchicalSeedPooling, values: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Y = SumKronLinear(Z), Z = [seeds +] MHA(LayerNorm(seeds), S_b, S_b), example by example."""
    seeds = hsp.seeds
    mean, var = seeds.mean(-1, keepdim=True), seeds.var(-1, unbiased=False, keepdim=True)
    normed = (seeds - mean) / torch.sqrt(var + hsp.seed_norm.eps) * hsp.seed_norm.weight + hsp.seed_norm.bias
    attend, head_dim = hsp.attend, DIM // HEADS
    q = normed @ attend.query.weight.T + attend.query.bias  # (m, d)
    outputs, start = [], 0
    for length in lengths:
        history = values[start : start + length]
        start += length
        kv = history @ attend.key_value.weight.T + attend.key_value.bias  # (L, 2d): keys then values
        k, v = kv[:, :DIM], kv[:, DIM:]
        heads = []
        for h in range(HEADS):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            if length == 0:
                heads.append(torch.zeros(len(seeds), head_dim))  # nothing to attend to
                continue
            weights = torch.softmax(q[:, cols] @ k[:, cols].T / head_dim**0.5, dim=-1)
            heads.append(weights @ v[:, cols])
        attended = torch.cat(heads, -1) @ attend.out.weight.T + attend.out.bias  # (m, d)
        z = seeds + attended if hsp.residual else attended
        t, w = hsp.compress.token_maps, hsp.compress.channel_maps
        outputs.append(sum(t[i].T @ z @ w[i] for i in range(RANK)) + hsp.compress.bias)
    return torch.stack(outputs)


@pytest.mark.parametrize("residual", [False, True])
def test_hsp_matches_the_hand_written_formula_on_jagged_histories(residual):
    hsp = _hsp(residual)
    values = torch.randn(sum(LENGTHS), DIM, generator=torch.Generator().manual_seed(1))
    plan = JaggedPlan(torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()]))
    out = hsp(values, plan)
    assert out.shape == (len(LENGTHS), OUTPUTS, DIM)
    assert hsp.seeds.shape == (MULTIPLIER * OUTPUTS, DIM)  # overcomplete
    torch.testing.assert_close(out, _reference(hsp, values, LENGTHS), rtol=1e-5, atol=1e-5)


def test_the_paper_form_has_no_residual_and_empty_histories_share_one_summary():
    paper, residual = _hsp(False), _hsp(True)  # same weights
    values = torch.randn(sum(LENGTHS), DIM)
    plan = JaggedPlan(torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()]))
    difference = residual(values, plan) - paper(values, plan)
    seeds_through_compress = residual.compress(residual.seeds.unsqueeze(0)) - residual.compress.bias
    torch.testing.assert_close(difference, seeds_through_compress.expand_as(difference), rtol=1e-5, atol=1e-5)
    empty = paper(values, plan)[[1, 3]]  # MHA over nothing is 0: Z is the attention's output bias
    expected = paper.compress(paper.attend.out.bias.expand(1, MULTIPLIER * OUTPUTS, DIM))
    torch.testing.assert_close(empty, expected.expand_as(empty))
    out = paper(values, plan)
    out.sum().backward()
    assert paper.seeds.grad is not None and paper.seeds.grad.abs().sum() > 0  # seeds still learn (through the norm)
    assert F.mse_loss(out[0], out[2]) > 0


def test_kunlun_config_key_picks_the_hsp_form():
    for residual in (False, True):
        kunlun = build_interaction("kunlun", num_tokens=3, dim=DIM, num_layers=2, pooling_residual=residual)
        forms = {m.residual for m in kunlun.modules() if isinstance(m, HierarchicalSeedPooling)}
        assert forms == {residual}
    assert {m.residual for m in build_interaction("kunlun", num_tokens=3, dim=DIM).modules() if isinstance(m, HierarchicalSeedPooling)} == {True}
