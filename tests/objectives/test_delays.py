"""Delay rates: the truncated exponential MLE recovers known rates, and shrinkage pulls small advertisers in."""

from __future__ import annotations

import numpy as np

from fxrec.objectives.delays import DelayHistory, fit_delay_rates, observed_delays, truncated_exponential_rate

DAY_S = 86_400


def _world(rates: np.ndarray, per_group: np.ndarray, seed: int = 0, days: float = 20.0):
    """Conversions of events spread over `days` before a cutoff, delays exactly exponential per group,
    those past the 7-day window dropped (no label): (ts, group, delay, cutoff)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(rates)), per_group)
    cutoff = 100 * DAY_S
    ts = cutoff - rng.uniform(0, days * DAY_S, len(groups))
    delays = rng.exponential(1 / rates[groups])
    inside = delays < 7 * DAY_S
    return ts[inside], groups[inside], delays[inside], cutoff


def test_plain_mle_without_truncation():
    delays = np.array([10.0, 20.0, 30.0, 40.0])
    rate = truncated_exponential_rate(delays, np.full(4, 1e12))[0]
    np.testing.assert_allclose(rate, 4 / delays.sum(), rtol=1e-6)


def test_rates_are_recovered_from_delays_observed_before_the_cutoff():
    rates = np.array([1 / 600, 1 / 3600, 1 / DAY_S, 1 / (2 * DAY_S)])
    ts, groups, delays, cutoff = _world(rates, np.full(4, 20_000))
    mask, limits = observed_delays(ts, delays, np.ones(len(ts)), cutoff, 7 * DAY_S)
    assert (~mask).sum() > 1000, "the slow groups must have conversions still to come"
    fitted = fit_delay_rates(delays[mask], limits[mask], groups[mask], 4, prior_events=0.0)
    np.testing.assert_allclose(fitted.rates, rates, rtol=0.05)
    # The naive estimate (count / sum of the observed delays) overstates the slow groups' rates.
    naive = np.bincount(groups[mask]) / np.bincount(groups[mask], delays[mask])
    assert naive[3] > 1.2 * rates[3]


def test_shrinkage_pulls_small_advertisers_toward_the_global_rate():
    rates = np.array([1 / 3600, 1 / 3600, 1 / 600])
    ts, groups, delays, cutoff = _world(rates, np.array([5000, 5000, 4]), seed=1)
    mask, limits = observed_delays(ts, delays, np.ones(len(ts)), cutoff, 7 * DAY_S)
    args = (delays[mask], limits[mask], groups[mask], 3)
    own = fit_delay_rates(*args, prior_events=0.0)
    shrunk = fit_delay_rates(*args, prior_events=20.0)
    strong = fit_delay_rates(*args, prior_events=1e7)
    distance = lambda r: abs(np.log(r[2]) - np.log(own.global_rate))  # noqa: E731
    assert distance(shrunk.rates) < 0.5 * distance(own.rates)  # the 4-delay advertiser moves most of the way
    np.testing.assert_allclose(shrunk.rates[:2], own.rates[:2], rtol=0.01)  # the big ones barely move
    np.testing.assert_allclose(strong.rates, own.global_rate, rtol=1e-3)
    assert shrunk.counts[2] == mask[groups == 2].sum()


def test_history_reads_no_delay_that_ends_after_the_cutoff():
    history = DelayHistory()
    ts = np.array([0.0, 0.0, 0.0, 10.0])
    history.add(ts, np.zeros(4), np.array([5.0, 8.0, 50.0, 0.0]), np.array([1, 1, 1, 0]))
    before = history.rates(20.0, 7 * DAY_S, 1, prior_events=0.0)
    expected = fit_delay_rates(np.array([5.0, 8.0]), np.array([20.0, 20.0]), np.zeros(2), 1, prior_events=0.0)
    np.testing.assert_allclose(before.rates, expected.rates)
    history.add(np.array([15.0]), np.zeros(1), np.array([1.0]), np.array([1]))  # converts at 16: before 20
    assert history.rates(20.0, 7 * DAY_S, 1, prior_events=0.0).rates[0] != before.rates[0]


def test_unknown_groups_read_the_global_rate():
    fitted = fit_delay_rates(np.array([10.0, 20.0]), np.full(2, 1e12), np.array([0, -1]), 1, prior_events=0.0)
    assert fitted.of(np.array([5, -1]))[0] == fitted.global_rate == fitted.of(np.array([-1]))[0]
    cdf = fitted.cdf(np.array([0, 0]), np.array([0.0, 1e9]), 7 * DAY_S)
    np.testing.assert_allclose(cdf, [0.0, 1.0])
