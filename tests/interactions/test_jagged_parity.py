"""The sequence arches on the jagged fast path equal themselves on the padded reference kernels.

Every `fxrec.ops` call inside InterFormer and Kunlun runs with backend "auto" (the jagged cpu path on
CPU); forcing "auto" to resolve to "reference" (pad to the batch max + mask) must give the same
outputs and the same gradient for every parameter and for the history values, on ragged batches with
empty and length-1 histories and lengths in several buckets.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from interaction_fixtures import DIM, NUM_TOKENS, make_sequence, make_tokens

import fxrec.ops.dispatch as dispatch
from fxrec.interactions.registry import build_interaction
from fxrec.ops import Backend

LENGTHS = [0, 1, 2, 5, 9, 17, 40, 0, 33, 1]
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("interformer", {"num_layers": 2}),
    ("interformer", {"num_layers": 1, "rotary": "time", "num_pma": 1, "num_recent": 3}),
    ("kunlun", {"num_layers": 2, "window": 4, "ffn_hidden": 16, "interaction_hidden": 32}),
    ("kunlun", {"num_layers": 3, "comp_skip": False, "pooling": "pma", "window": None}),
]


def forward_backward(name: str, kwargs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    module = build_interaction(name, num_tokens=NUM_TOKENS, dim=DIM, **kwargs)
    sequence = make_sequence(LENGTHS, max_len=48)
    sequence.values.requires_grad_()
    out = module(make_tokens(len(LENGTHS)), sequence)
    out.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    grads["<history values>"] = sequence.values.grad.clone()
    return out.detach(), grads


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_jagged_path_matches_padded_reference(name, kwargs, monkeypatch):
    fast_out, fast_grads = forward_backward(name, kwargs)
    resolve = dispatch.resolve_backend
    monkeypatch.setattr(
        dispatch,
        "resolve_backend",
        lambda b, d: Backend.REFERENCE if Backend(b) is Backend.AUTO else resolve(b, d),
    )
    ref_out, ref_grads = forward_backward(name, kwargs)
    torch.testing.assert_close(fast_out, ref_out, atol=1e-5, rtol=1e-4)
    assert fast_grads.keys() == ref_grads.keys()
    # fp32 rounding in a gradient scales with the largest gradient upstream of it (LayerNorm weight
    # gradients here reach ~100), not with its own size: each tensor gets 1e-4 of its own largest entry
    # plus 2e-7 (about one fp32 ulp) of the largest gradient anywhere
    largest = max(float(g.abs().max()) for g in ref_grads.values())
    for key in ref_grads:
        error = float((fast_grads[key] - ref_grads[key]).abs().max())
        bound = 1e-4 * float(ref_grads[key].abs().max()) + 2e-7 * largest + 1e-7
        assert error <= bound, f"{key}: max |diff| {error:.2e} > {bound:.2e}"
