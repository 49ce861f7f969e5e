"""InterFormer: two-way flow between non-sequence tokens and the jagged history, MaskNet merge."""

from __future__ import annotations

import pytest
import torch
from interaction_fixtures import DIM, LENGTHS, NUM_TOKENS, make_sequence, make_tokens

from fxrec.interactions.interformer import InterFormer
from fxrec.interactions.masknet import MaskNetMerge


def small(**kwargs) -> InterFormer:
    return InterFormer(num_tokens=NUM_TOKENS, dim=DIM, **kwargs).eval()


def test_default_output_is_x_sum_then_s_sum() -> None:
    model = small()
    # 4 CLS-sized X_sum tokens + (4 CLS + 2 PMA + 2 recent) S_sum tokens, as in the paper.
    assert model.num_outputs == 12
    assert model(make_tokens(5), make_sequence(LENGTHS)).shape == (5, 12, DIM)


def test_information_flows_both_ways() -> None:
    model = small(num_layers=2)
    tokens, sequence = make_tokens(5), make_sequence(LENGTHS)
    with torch.no_grad():
        base = model(tokens, sequence)
        other_seq = make_sequence(LENGTHS, seed=9)
        seq_changed = model(tokens, other_seq)
        tok_changed = model(make_tokens(5, seed=9), sequence)
    has_history = torch.tensor(LENGTHS) > 0
    # sequence -> non-sequence: X_sum moves when the history does (only where there is a history).
    assert (seq_changed[has_history, :4] - base[has_history, :4]).abs().amax() > 1e-4
    torch.testing.assert_close(seq_changed[~has_history], base[~has_history])
    # non-sequence -> sequence: S_sum moves with the tokens, even for an empty history (CLS tokens).
    assert (tok_changed[~has_history, 4:] - base[~has_history, 4:]).abs().amax() > 1e-4


def test_masknet_merges_aligned_sequences() -> None:
    model = small(num_sequences=3)
    sequence = make_sequence(LENGTHS, dim=3 * DIM)
    assert model(make_tokens(5), sequence).shape == (5, 12, DIM)
    with pytest.raises(ValueError, match="expects 48 features"):
        model(make_tokens(5), make_sequence(LENGTHS))
    assert MaskNetMerge(num_sequences=2, dim=4)(torch.randn(7, 8)).shape == (7, 4)


def test_needs_a_sequence() -> None:
    with pytest.raises(ValueError, match="sequence-aware"):
        small()(make_tokens(2))


def test_summary_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="num_cls >= 1"):
        small(num_cls=0)
    model = small(num_recent=0, num_pma=0)
    out = model(make_tokens(3), make_sequence([0, 2, 5]))
    assert out.shape == (3, model.num_outputs, DIM) and model.num_outputs == 2 * 4  # two num_cls summaries
