"""JaggedPlan (layout + length-bucket planner) and the jagged gather/scatter helpers of the sequence arches."""

from __future__ import annotations

import pytest
import torch
from ops_fixtures import offsets_of

from fxrec.ops import (
    JaggedPlan,
    gdpa,
    jagged_dense_attention,
    jagged_first,
    jagged_last,
    jagged_prepend,
    jagged_select,
    jagged_self_attention,
)


def test_plan_positions_batch_ids_and_max_len() -> None:
    plan = JaggedPlan(torch.tensor([0, 2, 2, 7, 8]))
    assert plan.positions.tolist() == [0, 1, 0, 1, 2, 3, 4, 0]
    assert plan.batch_ids.tolist() == [0, 0, 2, 2, 2, 2, 2, 3]
    assert (plan.batch_size, plan.max_len) == (4, 5)
    assert JaggedPlan(torch.zeros(3, dtype=torch.long)).max_len == 0


def test_buckets_never_pad_to_the_batch_max() -> None:
    lengths = [0, 1, 2, 3, 30, 100, 0, 9]
    chunks = JaggedPlan(offsets_of(lengths)).chunks(quadratic=True, row_bytes=64)
    covered = torch.cat([c.seq_ids for c in chunks]).sort().values
    assert covered.tolist() == [i for i, n in enumerate(lengths) if n > 0], "empty rows belong to no chunk"
    for chunk in chunks:
        assert chunk.padded_len == int(chunk.lengths.max()), "a bucket pads only to its own longest member"
    assert all(c.padded_len < 100 for c in chunks if 1 in c.seq_ids.tolist())


@pytest.mark.usefixtures("flash_kernel")
def test_a_reused_plan_plans_once_and_gives_the_same_result() -> None:
    """Model layers share one plan per batch: the buckets are planned once, the outputs are unchanged
    (with the bucketed flash kernel, the attention ops' planner)."""
    lengths = [0, 1, 3, 17, 40, 5]
    offsets, plan = offsets_of(lengths), JaggedPlan(offsets_of(lengths))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), 2, 8, generator=generator) for _ in range(3))
    seeds = torch.randn(len(lengths), 3, 2, 8, generator=generator)
    weights = torch.randn(2, len(lengths), 6, 2, 8, generator=generator)
    for _ in range(2):
        torch.testing.assert_close(jagged_self_attention(q, k, v, plan, 40, window=4),
                                   jagged_self_attention(q, k, v, offsets, 40, window=4))
        torch.testing.assert_close(jagged_dense_attention(seeds, k, v, plan, 40),
                                   jagged_dense_attention(seeds, k, v, offsets, 40))
        torch.testing.assert_close(gdpa(q, *weights, plan, 40, activation="gelu", scale=0.1),
                                   gdpa(q, *weights, offsets, 40, activation="gelu", scale=0.1))
    assert len(plan._chunks) == 3, "one cached bucket plan per (op, row size), reused on the second call"


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
