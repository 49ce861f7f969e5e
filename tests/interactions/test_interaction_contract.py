"""Every interaction keeps the contract: shapes on ragged batches, gradients, determinism, checkpoints."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from interaction_fixtures import DIM, LENGTHS, NUM_TOKENS, make_sequence, make_tokens

from fxrec.interactions.base import Interaction
from fxrec.interactions.registry import INTERACTIONS, build_interaction

# (registry name, constructor kwargs): small but exercising every code path.
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("dcnv2", {"num_layers": 2, "low_rank": 8}),
    ("dcnv2", {"num_layers": 1, "low_rank": None, "structure": "parallel", "deep_layers": [32, 16]}),
    ("dot", {}),
    ("dot", {"output_tokens": 3, "keep_inputs": False, "self_interaction": True}),
    ("attention_fm", {}),
    ("attention_fm", {"compressed": 3, "output_tokens": 2, "keep_inputs": False}),
    ("dhen", {"modules": ["dot", "dcn"], "num_layers": 2}),
    (
        "dhen",
        {
            "modules": ["dot", "dcn", "attention", "conv", "linear"],
            "ensemble": "concat",
            "output_tokens": [3, 2],
        },
    ),
    ("dhen", {"modules": ["attention", "linear"], "ensemble": "weighted_sum", "output_tokens": 4}),
    ("interformer", {"num_layers": 2}),
    (
        "interformer",
        {"num_layers": 1, "rotary": "time", "interaction_modules": ["dot", "linear"], "num_pma": 1},
    ),
    ("kunlun", {"num_layers": 2, "window": 3, "ffn_hidden": 16, "interaction_hidden": 32}),
    ("kunlun", {"num_layers": 3, "comp_skip": False, "pooling": "pma", "rotary": "position", "window": None}),
    ("kunlun", {"num_layers": 2, "window": 3, "ffn_hidden": 16, "interaction_tokens": "all"}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]


def build(name: str, kwargs: dict[str, Any], seed: int = 0) -> Interaction:
    torch.manual_seed(seed)
    return build_interaction(name, num_tokens=NUM_TOKENS, dim=DIM, **kwargs)


def run(module: Interaction, lengths: list[int], seed: int = 0) -> torch.Tensor:
    tokens = make_tokens(len(lengths), seed=seed)
    sequence = make_sequence(lengths, seed=seed) if module.sequence_aware else None
    return module(tokens, sequence)


def test_registry_names() -> None:
    assert {"dot", "dhen", "interformer", "kunlun"} <= set(INTERACTIONS)
    with pytest.raises(ValueError, match="unknown interaction"):
        build_interaction("nope", num_tokens=3, dim=4)


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=IDS)
@pytest.mark.parametrize(
    "lengths", [LENGTHS, [0, 0, 0], [1], [1, 1, 0, 2]], ids=["ragged", "all-empty", "one", "short"]
)
def test_shapes(name: str, kwargs: dict[str, Any], lengths: list[int]) -> None:
    module = build(name, kwargs)
    out = run(module, lengths)
    assert out.shape == (len(lengths), module.num_outputs, DIM)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=IDS)
def test_every_parameter_gets_a_gradient(name: str, kwargs: dict[str, Any]) -> None:
    module = build(name, kwargs)
    out = run(module, LENGTHS)
    # A random projection, not a plain sum: LayerNorm outputs sum to a constant and would hide gradients.
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    for param_name, param in module.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=IDS)
def test_deterministic_under_seed(name: str, kwargs: dict[str, Any]) -> None:
    first = run(build(name, kwargs, seed=7), LENGTHS)
    second = run(build(name, kwargs, seed=7), LENGTHS)
    assert torch.equal(first, second)


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=IDS)
def test_state_dict_round_trip(name: str, kwargs: dict[str, Any]) -> None:
    source = build(name, kwargs, seed=1).eval()
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target = build(name, kwargs, seed=2).eval()
    target.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.equal(run(source, LENGTHS), run(target, LENGTHS))


@pytest.mark.parametrize(
    "name,kwargs",
    [c for c in CONFIGS if c[0] in ("interformer", "kunlun")],
    ids=[i for i, c in zip(IDS, CONFIGS, strict=True) if c[0] in ("interformer", "kunlun")],
)
def test_examples_do_not_leak_across_the_batch(name: str, kwargs: dict[str, Any]) -> None:
    """Each example's output is the same alone as in a ragged batch: the jagged path mixes no rows."""
    module = build(name, kwargs).eval()
    tokens = make_tokens(len(LENGTHS))
    sequence = make_sequence(LENGTHS)
    with torch.no_grad():
        batched = module(tokens, sequence)
        for b, length in enumerate(LENGTHS):
            lo = int(sequence.offsets[b])
            alone = make_sequence([length])
            alone.values = sequence.values[lo : lo + length]
            alone.ages = sequence.ages[lo : lo + length]
            torch.testing.assert_close(module(tokens[b : b + 1], alone)[0], batched[b], atol=2e-5, rtol=1e-4)
