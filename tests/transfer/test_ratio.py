"""Transfer ratio over seeds: the ratio of the mean NEs, its seed bootstrap, and when it is undefined."""

from __future__ import annotations

import numpy as np
import pytest

from fxrec.transfer.ratio import FM_NOT_BETTER, transfer_ratio_over_seeds


def test_ratio_over_seeds_is_the_ratio_of_means_not_the_mean_of_ratios():
    baseline, channel, fm = np.array([1.00, 0.80]), np.array([0.90, 0.79]), 0.70
    # Per seed: 0.10 / 0.30 = 0.333 and 0.01 / 0.10 = 0.100, mean 0.217.
    # Of means: (0.900 - 0.845) / (0.900 - 0.700) = 0.275.
    result = transfer_ratio_over_seeds(baseline, channel, fm)
    assert result.value == pytest.approx(0.275)
    assert result.reason is None


def test_ratio_of_means_uses_the_fm_mean_when_given_per_seed():
    result = transfer_ratio_over_seeds(np.array([1.0, 0.8]), np.array([0.9, 0.79]), np.array([0.69, 0.71]))
    assert result.value == pytest.approx(0.275)


def test_seed_bootstrap_interval_contains_the_ratio_and_is_seeded():
    rng = np.random.default_rng(0)
    baseline = 0.90 + 0.002 * rng.standard_normal(5)
    channel = 0.88 + 0.002 * rng.standard_normal(5)
    first = transfer_ratio_over_seeds(baseline, channel, 0.85)
    assert first.low is not None and first.high is not None
    assert first.low <= first.value <= first.high
    assert first.high - first.low > 0  # the seeds differ, so does the ratio across resamples
    assert transfer_ratio_over_seeds(baseline, channel, 0.85) == first
    # One or two seeds: a value, no interval.
    for seeds in (1, 2):
        few = transfer_ratio_over_seeds(baseline[:seeds], channel[:seeds], 0.85)
        assert few.value is not None and few.low is None and few.high is None


def test_ratio_is_undefined_with_a_reason_when_the_fm_is_no_better():
    for baseline, fm in (([0.5, 0.5], 0.5), ([0.91, 0.89], 0.95)):  # FM equal to the baseline, and worse
        result = transfer_ratio_over_seeds(np.array(baseline), np.array([0.48, 0.48]), fm)
        assert result.value is None and result.low is None and result.high is None
        assert result.reason == FM_NOT_BETTER


def test_ratio_needs_one_ne_per_seed_everywhere():
    with pytest.raises(ValueError, match="one NE per seed"):
        transfer_ratio_over_seeds(np.array([0.9, 0.9]), np.array([0.88]), 0.85)
