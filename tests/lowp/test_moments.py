"""The probe's running statistics equal numpy's mean and covariance on the same rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fxrec.lowp.stats import RunningMoments, cholesky_with_jitter, weight_stats


def _rows(seed: int = 0, n: int = 101, f: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(f, f))
    return (rng.normal(size=(n, f)) @ mix + rng.normal(size=f) * 3).astype(np.float32)


def _assert_matches(moments: RunningMoments, rows: np.ndarray) -> None:
    assert moments.count == len(rows)
    np.testing.assert_allclose(
        moments.mean.numpy(), rows.mean(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        moments.covariance().numpy(), np.cov(rows.astype(np.float64), rowvar=False), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(moments.absmax.numpy(), np.abs(rows).max(axis=0), rtol=1e-6)
    assert moments.mean.dtype == torch.float32 and moments.covariance().dtype == torch.float32


def test_batched_merge_over_uneven_batches_equals_numpy():
    rows = _rows()
    moments = RunningMoments(rows.shape[1])
    start = 0
    for size in (1, 7, 32, 1, 0, 60):  # a single-row batch, an empty one
        moments.update(torch.from_numpy(rows[start : start + size]))
        start += size
    assert start == len(rows)
    _assert_matches(moments, rows)


def test_token_inputs_are_flattened_into_rows():
    rows = _rows(seed=1, n=4 * 6 * 2, f=3)
    moments = RunningMoments(3)
    for chunk in np.split(rows.reshape(8, 6, 3), 2):  # two (B, n, F) batches of 4 x 6 tokens
        moments.update(torch.from_numpy(chunk))
    _assert_matches(moments, rows)


def test_merging_accumulators_equals_one_pass():
    rows = _rows(seed=2)
    left, right = RunningMoments(5), RunningMoments(5)
    left.update(torch.from_numpy(rows[:40]))
    right.update(torch.from_numpy(rows[40:]))
    left.merge(right)
    _assert_matches(left, rows)
    with pytest.raises(ValueError):
        left.merge(RunningMoments(4))


def test_a_single_row_has_a_mean_and_no_spread():
    moments = RunningMoments(3)
    moments.update(torch.tensor([1.0, -2.0, 3.0]))
    assert moments.count == 1
    assert torch.equal(moments.mean, torch.tensor([1.0, -2.0, 3.0]))
    assert torch.equal(moments.covariance(), torch.zeros(3, 3))
    assert torch.equal(moments.sample(4), torch.tensor([[1.0, -2.0, 3.0]]).expand(4, 3))


def test_samples_follow_the_learned_gaussian_even_when_it_is_singular():
    rows = _rows(seed=3, n=400, f=4)
    rows[:, 2] = 7.0  # a constant feature: the covariance is singular, the jitter makes it factor
    moments = RunningMoments(4)
    moments.update(torch.from_numpy(rows))
    drawn = moments.sample(20000, torch.Generator().manual_seed(0)).double().numpy()
    np.testing.assert_allclose(drawn.mean(axis=0), rows.mean(axis=0), atol=0.1 * rows.std(axis=0).max())
    cov = np.cov(rows.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(np.cov(drawn, rowvar=False), cov, atol=0.05 * np.abs(cov).max())
    assert np.abs(drawn[:, 2] - 7.0).max() < 1e-3 * rows.std(axis=0).max()  # only the jitter's 1e-4 std


def test_cholesky_of_a_zero_matrix_is_zero():
    assert torch.equal(
        cholesky_with_jitter(torch.zeros(3, 3, dtype=torch.float64)), torch.zeros(3, 3, dtype=torch.float64)
    )


def test_weight_stats():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -4.0, 0.0], [0.5, 0.5, -1.0]]))
        layer.bias.copy_(torch.tensor([3.0, 4.0]))
    stats = weight_stats(layer)
    assert (stats.out_features, stats.in_features) == (2, 3)
    assert stats.absmax == 4.0
    assert stats.std == pytest.approx(float(np.std([1.0, -4.0, 0.0, 0.5, 0.5, -1.0], ddof=1)))
    assert stats.row_absmax_spread == pytest.approx(4.0 / 1.0)  # torch's median of [4, 1] is the lower, 1
    assert stats.bias_norm == pytest.approx(5.0)
    assert weight_stats(nn.Linear(3, 2, bias=False)).bias_norm is None
