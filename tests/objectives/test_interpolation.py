"""Personalized Interpolation: α is the exponential CDF ratio, and p_T is exact for exponential delays."""

from __future__ import annotations

import numpy as np
import pytest

from fxrec.objectives.interpolation import alpha, exponential_window, interpolate

DAY_S = 86_400
SHORT, LONG = DAY_S, 7 * DAY_S


def _cdf(beta, t):
    return 1 - np.exp(-beta * t)


@pytest.mark.parametrize("window_days", [1, 2, 3, 5, 7])
def test_alpha_is_the_exponential_cdf_ratio(window_days):
    beta = np.array([1 / 7200, 1 / 3600, 1 / DAY_S, 1 / (3 * DAY_S), 1e-9])
    t = window_days * DAY_S
    expected = (_cdf(beta, t) - _cdf(beta, SHORT)) / (_cdf(beta, LONG) - _cdf(beta, SHORT))
    np.testing.assert_allclose(alpha(beta, SHORT, LONG, t), expected, rtol=1e-6, atol=1e-12)


def test_alpha_is_linear_as_the_rate_vanishes_and_clipped_outside_the_heads():
    np.testing.assert_allclose(alpha(0.0, SHORT, LONG, 4 * DAY_S), 0.5)
    assert alpha(1e-4, SHORT, LONG, 0.5 * DAY_S) == 0.0 and alpha(1e-4, SHORT, LONG, 9 * DAY_S) == 1.0


def test_interpolation_equals_the_dedicated_window_truth_when_delays_are_exponential():
    rng = np.random.default_rng(0)
    p_inf = rng.uniform(0.01, 0.4, 1000)
    beta = np.exp(rng.uniform(np.log(1 / (7 * DAY_S)), np.log(1 / 600), 1000))
    p_short, p_long = p_inf * _cdf(beta, SHORT), p_inf * _cdf(beta, LONG)
    for days in (2, 3, 5):
        truth = p_inf * _cdf(beta, days * DAY_S)
        np.testing.assert_allclose(
            interpolate(p_short, p_long, beta, SHORT, LONG, days * DAY_S), truth, rtol=1e-9
        )


def test_interpolation_matches_simulated_window_labels():
    """Events whose conversions have exponential delays: each advertiser's conversion rate within 3 days
    is the interpolation of its 1-day and 7-day rates (up to sampling noise)."""
    rng = np.random.default_rng(1)
    advertisers, per = 40, 50_000
    p_inf = rng.uniform(0.05, 0.3, advertisers)
    beta = np.exp(rng.uniform(np.log(1 / (4 * DAY_S)), np.log(1 / 3600), advertisers))
    group = np.repeat(np.arange(advertisers), per)
    converts = rng.random(len(group)) < p_inf[group]
    delay = rng.exponential(1 / beta[group])
    rate = lambda t: np.bincount(group, converts & (delay < t)) / per  # noqa: E731
    predicted = interpolate(rate(SHORT), rate(LONG), beta, SHORT, LONG, 3 * DAY_S)
    np.testing.assert_allclose(predicted, rate(3 * DAY_S), atol=0.006)


def test_interpolation_stays_between_the_heads():
    p = interpolate(np.array([0.2, 0.1]), np.array([0.1, 0.3]), 1e-4, SHORT, LONG, 3 * DAY_S)
    assert 0.1 <= p[0] <= 0.2 and 0.1 <= p[1] <= 0.3


def test_global_rate_baseline_is_the_scaled_exponential_cdf():
    p_inf, lam = np.array([0.2]), 1 / DAY_S
    p_long = p_inf * _cdf(lam, LONG)
    np.testing.assert_allclose(exponential_window(p_long, lam, LONG, 2 * DAY_S), p_inf * _cdf(lam, 2 * DAY_S))
