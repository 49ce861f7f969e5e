"""Kunlun: CompSkip layout, HSP / PMA pooling, ROTE, event-level towers."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from interaction_fixtures import DIM, LENGTHS, NUM_TOKENS, make_sequence, make_tokens

from fxrec.interactions.kunlun import Kunlun
from fxrec.interactions.pooling import HierarchicalSeedPooling, SumKronLinear


def small(**kwargs) -> Kunlun:
    defaults = {"window": 3, "ffn_hidden": 16, "interaction_hidden": 32}
    return Kunlun(num_tokens=NUM_TOKENS, dim=DIM, **{**defaults, **kwargs}).eval()


def test_comp_skip_alternates_global_and_local_layers() -> None:
    skip, full = small(num_layers=3), small(num_layers=3, comp_skip=False)
    tower = skip.towers[0]
    assert (
        sorted(tower.ffn) == ["0", "2"]
        and sorted(tower.pool) == ["0", "2"]
        and sorted(tower.attention) == ["1"]
    )
    assert sorted(full.towers[0].attention) == ["0", "1", "2"]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(skip) < count(full)


def test_rote_reads_ages_and_rope_does_not() -> None:
    tokens, sequence = make_tokens(5), make_sequence(LENGTHS)
    reshuffled, older = make_sequence(LENGTHS), make_sequence(LENGTHS)
    reshuffled.ages = sequence.ages.flip(0)
    older.ages = sequence.ages * 50
    with torch.no_grad():
        rote, rope = small(rotary="time"), small(rotary="position")
        assert (rote(tokens, sequence) - rote(tokens, reshuffled)).abs().amax() > 1e-4
        # ROTE is relative in log time: ageing every event by the same factor barely moves the output.
        torch.testing.assert_close(rote(tokens, sequence), rote(tokens, older), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(rope(tokens, sequence), rope(tokens, reshuffled))


@pytest.mark.parametrize("pooling", ["hsp", "pma"])
def test_empty_histories_pool_to_the_same_summary(pooling: str) -> None:
    model = small(pooling=pooling, num_sequence_tokens=3)
    out = model(make_tokens(5), make_sequence([0, 4, 0, 1, 0]))
    assert out.shape == (5, 4 + 3, DIM)
    # The final pooled tokens of empty histories come from the seeds alone.
    torch.testing.assert_close(out[0, 4:], out[2, 4:])
    torch.testing.assert_close(out[0, 4:], out[4, 4:])


def test_hsp_is_overcomplete_and_sum_kron_linear_matches_its_formula() -> None:
    hsp = HierarchicalSeedPooling(dim=8, num_outputs=2, num_heads=2, seed_multiplier=4, rank=3)
    assert hsp.seeds.shape == (8, 8)
    skl = SumKronLinear(in_tokens=5, out_tokens=2, dim=4, rank=3)
    x = torch.randn(2, 5, 4)
    expected = sum(skl.token_maps[i].T @ x @ skl.channel_maps[i] for i in range(3)) + skl.bias
    torch.testing.assert_close(skl(x), expected)
    with pytest.raises(ValueError, match="pooling"):
        small(pooling="mean")


def test_event_level_towers() -> None:
    model = small(num_event_types=2, num_sequence_tokens=2)
    assert model.num_outputs == 4 + 2 * 2
    sequence = make_sequence(LENGTHS)
    types = torch.arange(sum(LENGTHS)) % 2
    model.train()
    out = model(make_tokens(5), sequence, event_types=types)
    assert out.shape == (5, 8, DIM)
    (out * torch.randn(out.shape)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    with torch.no_grad():
        assert (model(make_tokens(5), sequence, event_types=1 - types) - out).abs().amax() > 1e-5
    with pytest.raises(ValueError, match="event types"):
        model(make_tokens(5), sequence)
    with torch.no_grad():  # types carried by the sequence (the model's event_type_feature) act the same
        torch.testing.assert_close(model(make_tokens(5), replace(sequence, types=types)), out)
    with pytest.raises(ValueError, match="out of range"):
        model(make_tokens(5), sequence, event_types=types + 1)


def test_event_towers_have_their_own_width_and_length() -> None:
    model = small(num_event_types=2, num_sequence_tokens=2, event_widths=[DIM, 8], event_lengths=[None, 2])
    assert (
        model.towers[1].attention["1"].qkv.in_features == 8
        and model.towers[0].attention["1"].qkv.in_features == DIM
    )
    lengths = [0, 1, 3, 7, 20]
    sequence = make_sequence(lengths)
    types = torch.arange(sum(lengths)) % 2  # within each history, types alternate from its first entry
    model.eval()
    out = model(make_tokens(5), sequence, event_types=types)
    assert out.shape == (5, model.num_outputs, DIM)
    start = sum(lengths[:4])  # the 20-entry history: type-1 entries sit at odd offsets from `start`
    type1_rows = [r for r in range(start, start + 20) if types[r] == 1]

    def perturbed(row: int) -> torch.Tensor:
        values = sequence.values.clone()
        values[row] += torch.linspace(-10.0, 10.0, DIM)  # a new direction: the input norm removes shifts
        return model(make_tokens(5), replace(sequence, values=values), event_types=types)

    with torch.no_grad():
        # the oldest type-1 entry is outside its tower's last 2 (and the type-0 tower never sees type 1)
        torch.testing.assert_close(perturbed(type1_rows[0]), out)
        assert (perturbed(type1_rows[-1]) - out)[4].abs().amax() > 1e-4
    with pytest.raises(ValueError, match="one entry per event type"):
        small(num_event_types=2, event_widths=[DIM])


def test_input_norm_makes_the_embedding_scale_irrelevant() -> None:
    # Fresh embedding rows are ~100x smaller than the blocks' biases; with input_norm the output
    # depends on the direction of each token and history entry, not on its scale.
    tokens, sequence = make_tokens(5), make_sequence(LENGTHS)
    shrunk = replace(sequence, values=sequence.values * 0.1)
    with torch.no_grad():
        model, plain = small(input_norm=True), small()
        assert torch.allclose(model(tokens, sequence), model(tokens * 0.1, shrunk), atol=1e-2)
        assert not torch.allclose(plain(tokens, sequence), plain(tokens * 0.1, shrunk), atol=1e-2)


def test_interaction_tokens_all_crosses_the_raw_tokens_too() -> None:
    tokens, sequence = make_tokens(5), make_sequence(LENGTHS)
    seen: list[int] = []
    for mode, extra in (("summary", 0), ("all", NUM_TOKENS)):
        model = small(interaction_tokens=mode, num_summary=2, num_sequence_tokens=3)
        handle = model.interactions[0].register_forward_pre_hook(
            lambda _, args: seen.append(args[0].shape[1])
        )
        with torch.no_grad():
            out = model(tokens, sequence)
        handle.remove()
        assert seen[-1] == 2 + 3 + extra and out.shape == (5, 2 + 3, DIM)
    with pytest.raises(ValueError, match="interaction_tokens"):
        small(interaction_tokens="tokens")
