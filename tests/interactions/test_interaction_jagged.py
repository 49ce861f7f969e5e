"""Jagged helpers and rotary encodings."""

from __future__ import annotations

import torch

from fxrec.interactions.jagged import JaggedPlan, jagged_first, jagged_last, jagged_prepend, jagged_select
from fxrec.interactions.rope import Rotary, apply_rotary, log_time, rotary_angles


def test_plan_positions_and_pad_unpad_round_trip() -> None:
    offsets = torch.tensor([0, 2, 2, 7, 8])
    plan = JaggedPlan.from_offsets(offsets, min_bucket=2)
    assert plan.positions.tolist() == [0, 1, 0, 1, 2, 3, 4, 0]
    assert plan.batch_ids.tolist() == [0, 0, 2, 2, 2, 2, 2, 3]
    values = torch.randn(8, 3)
    parts = [plan.pad(values, b) for b in plan.buckets]
    assert torch.equal(plan.unpad(parts, like=values), values)


def test_prepend_first_last() -> None:
    offsets = torch.tensor([0, 0, 1, 4])
    values = torch.arange(4, dtype=torch.float32)[:, None] + 10  # rows 10, 11, 12, 13
    prefix = -torch.arange(1, 7, dtype=torch.float32).reshape(3, 2, 1)  # (B=3, c=2, 1)
    out, new_offsets, is_prefix = jagged_prepend(prefix, values, offsets)
    assert new_offsets.tolist() == [0, 2, 5, 10]
    assert out[:, 0].tolist() == [-1, -2, -3, -4, 10, -5, -6, 11, 12, 13]
    assert is_prefix.tolist() == [True, True, True, True, False, True, True, False, False, False]
    assert torch.equal(jagged_first(out, new_offsets, 2), prefix)
    # Two most recent real entries, newest last; CLS rows and missing entries are zeros.
    recent = jagged_last(out, new_offsets, 2, skip_first=2)[..., 0]
    assert recent.tolist() == [[0, 0], [0, 10], [12, 13]]


def test_last_on_an_empty_batch() -> None:
    assert jagged_last(torch.zeros(0, 4), torch.zeros(3, dtype=torch.long), 2).shape == (2, 2, 4)


def test_select_keeps_order_and_rebuilds_offsets() -> None:
    offsets = torch.tensor([0, 3, 3, 5])
    values = torch.arange(5, dtype=torch.float32)[:, None]
    ages = torch.arange(5, dtype=torch.float32) * 10
    keep = torch.tensor([True, False, True, False, False])
    kept, new_offsets, kept_ages = jagged_select(keep, values, offsets, ages)
    assert kept[:, 0].tolist() == [0, 2]
    assert new_offsets.tolist() == [0, 2, 2, 2]
    assert kept_ages is not None and kept_ages.tolist() == [0, 20]


def test_rotary_scores_depend_only_on_the_time_difference() -> None:
    q, k = torch.randn(1, 1, 8), torch.randn(1, 1, 8)

    def score(tq: float, tk: float) -> torch.Tensor:
        aq, ak = rotary_angles(torch.tensor([tq]), 8, 100.0), rotary_angles(torch.tensor([tk]), 8, 100.0)
        return (apply_rotary(q, aq) * apply_rotary(k, ak)).sum()

    torch.testing.assert_close(score(3.0, 1.0), score(7.5, 5.5))
    assert not torch.allclose(score(3.0, 1.0), score(3.0, 2.0))
    torch.testing.assert_close(apply_rotary(q, rotary_angles(torch.zeros(1), 8, 100.0)), q)


def test_rote_uses_log_age_and_falls_back_to_positions() -> None:
    rot = Rotary(head_dim=8, mode="time")
    positions, ages = torch.arange(3), torch.tensor([0.0, 59.0, 86399.0])
    torch.testing.assert_close(log_time(ages), torch.log(torch.tensor([1.0, 60.0, 86400.0])))
    assert torch.equal(rot.angles(positions, ages), rotary_angles(log_time(ages), 8, rot.base))
    assert torch.equal(rot.angles(positions, None), rotary_angles(positions, 8, rot.base))
    assert Rotary(head_dim=8, mode="none").angles(positions, ages) is None
