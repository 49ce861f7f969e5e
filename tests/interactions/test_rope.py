"""Rotary encodings (RoPE by position, ROTE by log age). The jagged helpers are tested in tests/ops."""

from __future__ import annotations

import torch

from fxrec.interactions.rope import Rotary, apply_rotary, log_time, rotary_angles


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
