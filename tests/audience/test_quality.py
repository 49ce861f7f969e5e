"""Data-provider quality from aggregate truth: both estimators recover known rates from exact aggregates,
constrained estimates stay in [0, 1] whatever the input, cross-validation never fits on a held-out
campaign's aggregate, qualified reach equals its definition, campaigns aggregate what they reach."""

from __future__ import annotations

import numpy as np
import pytest

from fxrec.audience.campaigns import CampaignAggregates, CampaignConfig, campaign_queries, measure_campaigns
from fxrec.audience.evaluate import reach
from fxrec.audience.population import PopulationConfig, audience_schema, generate_chunk
from fxrec.audience.quality import (
    Rates,
    Shares,
    cross_validate,
    fit_backward,
    fit_least_squares,
    fit_mle,
    naive,
    qualified_reach,
)
from fxrec.audience.quality_report import assess, estimates
from fxrec.audience.query import parse
from fxrec.audience.reach import ReachIndex
from fxrec.audience.sample import census, draw
from fxrec.audience.schema import has_bit
from fxrec.audience.strata import Stratification, candidate_dimensions
from fxrec.errors import InputError


def _exact(recall: float, fpr: float, campaigns: int = 40, seed: int = 0) -> Shares:
    """Campaigns whose label shares are exactly (1): no sampling noise."""
    rng = np.random.default_rng(seed)
    truth = np.concatenate(
        [rng.uniform(0.01, 0.15, campaigns - campaigns // 4), rng.uniform(0.4, 0.9, campaigns // 4)]
    )
    return Shares(recall * truth + fpr * (1 - truth), truth, rng.integers(100, 100_000, campaigns))


@pytest.mark.parametrize(("recall", "fpr"), [(0.6, 0.004), (0.9, 0.08), (0.35, 0.02), (1.0, 0.0)])
def test_both_estimators_recover_rates_from_exact_aggregates(recall, fpr):
    shares = _exact(recall, fpr)
    prevalence = 0.05
    population_label = recall * prevalence + fpr * (1 - prevalence)
    precision = recall * prevalence / population_label
    fits = (fit_least_squares(shares), fit_least_squares(shares, weighted=True), fit_mle(shares))
    for rates in (*fits, fit_mle(shares, start=(0.5, 0.5))):
        assert rates.recall == pytest.approx(recall, abs=1e-3)
        assert rates.false_positive_rate == pytest.approx(fpr, abs=1e-3)
        assert rates.precision(population_label) == pytest.approx(precision, abs=1e-3)
        assert np.allclose(rates.truth_share(shares.label), shares.truth, atol=1e-3)


def _exact_aggregates(
    precision: np.ndarray, recall: np.ndarray, campaigns: int = 60
) -> tuple[CampaignAggregates, np.ndarray]:
    """[providers, segments] known rates -> exact campaign aggregates, some campaigns targeting a label
    (whose label share is then 1: excluded for that label, as measure_campaigns marks it)."""
    providers, segments = precision.shape
    rng = np.random.default_rng(1)
    prevalence = rng.uniform(0.02, 0.2, segments)
    fpr = prevalence * recall * (1 - precision) / (precision * (1 - prevalence))
    agency = np.clip(prevalence * rng.lognormal(0, 0.5, (campaigns, segments)), 0, 1)
    agency[rng.random((campaigns, segments)) < 0.2] = rng.uniform(0.5, 0.95)
    labels = recall[:, None, :] * agency[None] + fpr[:, None, :] * (1 - agency[None])
    targeted = rng.random(labels.shape) < 0.1
    labels[targeted] = 1.0  # selected on the label: every reached user carries it
    return CampaignAggregates(
        segments=[f"s{k}" for k in range(segments)],
        providers=[f"p{j}" for j in range(providers)],
        queries=["age >= 0"] * campaigns,
        users=np.full(campaigns, 1000),
        impressions=rng.integers(1000, 50_000, campaigns),
        agency=agency,
        labels=labels,
        targeted=targeted,
        population_users=10**6,
        population_labels=recall * prevalence + fpr * (1 - prevalence),
    ), fpr


def test_assess_recovers_precision_and_fpr_per_provider_and_segment_and_ranks():
    rng = np.random.default_rng(2)
    precision = np.clip(np.array([0.9, 0.75, 0.6, 0.45])[:, None] + rng.normal(0, 0.02, (4, 6)), 0.05, 0.99)
    recall = rng.uniform(0.3, 0.95, (4, 6))
    aggregates, fpr = _exact_aggregates(precision, recall)
    report = assess(aggregates, folds=4)
    for method in ("least_squares", "mle"):
        found = estimates(report, method)
        for j, provider in enumerate(aggregates.providers):
            assert np.allclose(found[provider], precision[j], atol=1e-3), (method, provider)
            fitted = [report["providers"][provider]["segments"][s][method] for s in aggregates.segments]
            assert np.allclose([f["false_positive_rate"] for f in fitted], fpr[j], atol=1e-3)
            assert all(f["cv_error"] < 1e-3 for f in fitted)
    assert report["ranking"] == ["p0", "p1", "p2", "p3"]
    assert [report["providers"][p]["summary"]["rank"] for p in report["ranking"]] == [1, 2, 3, 4]
    # the targeted campaigns were left out of that label's fit
    row = report["providers"]["p0"]["segments"]["s0"]
    assert row["campaigns"] == int((~aggregates.targeted[0, :, 0]).sum())


ADVERSARIAL = {
    "zeros": Shares(np.zeros(8), np.zeros(8), np.ones(8)),
    "ones": Shares(np.ones(8), np.ones(8), np.ones(8)),
    "anti": Shares(np.linspace(1, 0, 9), np.linspace(0, 1, 9), np.arange(1, 10)),
    "uncorrelated": Shares(np.full(6, 0.3), np.linspace(0, 1, 6), np.ones(6)),
    "flat truth": Shares(np.linspace(0, 1, 6), np.full(6, 0.2), np.ones(6)),
    "labels exceed": Shares(np.ones(5), np.full(5, 1e-9), np.ones(5)),
    "zero weight": Shares(
        np.random.default_rng(0).random(7), np.random.default_rng(1).random(7), np.zeros(7)
    ),
    "one campaign": Shares([0.4], [0.1], [10]),
    "no campaign": Shares([], [], []),
    "random": Shares(
        *np.random.default_rng(3).random((2, 50)), np.random.default_rng(4).integers(0, 10**7, 50)
    ),
    "huge weights": Shares([0.0, 1.0, 0.5], [1.0, 0.0, 0.5], [1e12, 1e12, 1]),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_constrained_estimates_stay_in_the_unit_interval(name):
    shares = ADVERSARIAL[name]
    for fit in (fit_least_squares, lambda s: fit_least_squares(s, weighted=True), fit_mle):
        rates = fit(shares)
        values = [rates.recall, rates.false_positive_rate]
        values += [rates.precision(q) for q in (0.0, 1e-9, 0.3, 1.0)]
        values += list(rates.truth_share(np.array([0.0, 0.5, 1.0])))
        assert all(np.isfinite(v) and 0 <= v <= 1 for v in values), values
    assert all(0 <= v <= 1 for v in (*naive(shares), *fit_backward(shares)))


def test_constrained_estimates_stay_in_the_unit_interval_on_random_shares():
    rng = np.random.default_rng(11)
    for _ in range(60):
        n = int(rng.integers(0, 30))
        kind = rng.integers(3)
        label = rng.random(n) if kind else rng.choice([0.0, 1.0], n)
        truth = rng.random(n) ** rng.uniform(0.2, 5) if kind != 2 else np.full(n, rng.random())
        shares = Shares(label, truth, rng.integers(0, 10 ** int(rng.integers(1, 9)), n))
        for rates in (fit_least_squares(shares), fit_mle(shares)):
            values = [rates.recall, rates.false_positive_rate, rates.precision(float(rng.random()))]
            assert all(np.isfinite(v) and 0 <= v <= 1 for v in values), values
        cv = cross_validate(shares, fit_mle, folds=4, seed=0)
        assert np.all((cv.predicted >= 0) & (cv.predicted <= 1))


def test_cross_validation_never_fits_on_a_held_out_aggregate():
    shares = _exact(0.7, 0.03, campaigns=30)
    shares = Shares(
        shares.label, shares.truth + np.arange(30) * 1e-6, shares.weight
    )  # every aggregate unique
    seen: list[np.ndarray] = []

    def spy(train: Shares) -> Rates:
        seen.append(train.truth.copy())
        return fit_least_squares(train)

    cv = cross_validate(shares, spy, folds=5, seed=3)
    assert len(seen) == len(cv.folds) == 5
    assert sorted(np.concatenate(cv.folds).tolist()) == list(range(30))
    for held, passed in zip(cv.folds, seen, strict=True):
        assert not np.isin(shares.truth[held], passed).any()
        assert len(passed) == 30 - len(held)
    # garbage in a held-out fold's aggregates changes nothing fitted for that fold
    fold = cv.folds[2]
    spoiled = Shares(shares.label, shares.truth.copy(), shares.weight)
    spoiled.truth[fold] = 1.0 - spoiled.truth[fold]
    again = cross_validate(spoiled, fit_mle, folds=5, seed=3)
    clean = cross_validate(shares, fit_mle, folds=5, seed=3)
    assert again.rates[2] == clean.rates[2]
    assert np.array_equal(again.predicted[fold], clean.predicted[fold])
    assert again.error > clean.error  # ... only its score against the truth


def test_qualified_reach_by_hand():
    counts = {"country:US": 1000.0, "(country:US) and dmp_a:sports": 200.0}
    asked = []

    def count(expr: str) -> float:
        asked.append(expr)
        return counts[expr]

    found = qualified_reach(count, Rates(0.8, 0.1), "dmp_a", "sports", "country:US")
    # label share 0.2 = 0.8 pi + 0.1 (1 - pi): pi = 1/7; true members labelled: 1000 * 0.8 / 7
    assert found.qualified == pytest.approx(1000 * 0.8 / 7)
    assert found.precision == pytest.approx(0.8 / 7 / 0.2)
    assert (found.labelled, found.base) == (200.0, 1000.0)
    assert set(asked) == set(counts)
    # no targeting: the whole population (labelled + unlabelled)
    everyone = qualified_reach(
        {"dmp_a:sports": 30.0, "not dmp_a:sports": 70.0}.get, Rates(0.9, 0.0), "dmp_a", "sports"
    )
    assert everyone.precision == pytest.approx(1.0) and everyone.qualified == pytest.approx(30.0)


def test_qualified_reach_through_a_reach_index_matches_exact_counts():
    config = PopulationConfig(users=4000, chunk_size=4000, interests=8)
    schema, population = audience_schema(config), generate_chunk(config, 0)
    by_name = {d.name: d for d in candidate_dimensions(schema, population)}
    strata = Stratification((by_name["age band"],))
    counts = census(strata, [population])
    index = ReachIndex(schema, draw(strata, counts, counts.users, [population], seed=0), min_support=0)

    def exact(expr: str) -> float:
        return float(reach(parse(expr, schema), population)[0].sum())

    rates = Rates(0.7, 0.02)
    for target in ("age in 18..34", None):
        estimated = qualified_reach(index, rates, "dmp_b", "sports", target)
        truth = qualified_reach(exact, rates, "dmp_b", "sports", target)
        assert estimated.qualified == pytest.approx(truth.qualified, rel=1e-9)
        assert 0 < estimated.qualified < estimated.labelled


POP = PopulationConfig(users=20_000, chunk_size=8_000, interests=24)


def test_campaigns_aggregate_what_they_reach():
    schema = audience_schema(POP)
    config = CampaignConfig(campaigns=12, segments=6, seed=5)
    chunks = [generate_chunk(POP, i) for i in range(3)]
    aggregates = measure_campaigns(schema, chunks, config)
    assert aggregates.agency.shape == (12, 6) and aggregates.labels.shape == (5, 12, 6)
    assert (aggregates.impressions >= aggregates.users).all() and aggregates.users.sum() > 0
    for c, text in enumerate(aggregates.queries):
        for j, provider in enumerate(aggregates.providers):
            for k, segment in enumerate(aggregates.segments):
                assert aggregates.targeted[j, c, k] == (f"{provider}:{segment}" in text)
                if aggregates.targeted[j, c, k] and " or " not in text:
                    assert aggregates.labels[j, c, k] == pytest.approx(1.0)
    # the population's label shares are the providers' own counts
    labelled = sum(has_bit(chunk.segments["dmp_c"], 2).sum() for chunk in chunks)
    assert aggregates.population_labels[2, 2] == pytest.approx(labelled / POP.users)
    # a campaign reaching everyone with all their impressions: the agency share is the exact one
    everyone = CampaignConfig(campaigns=1, segments=6, reach_low=1.0, reach_high=1.0)
    whole = measure_campaigns(schema, chunks, everyone, queries=["age >= 0"])
    weights = np.concatenate([chunk.total_impressions for chunk in chunks])
    truth = np.concatenate([has_bit(chunk.segments["interest"], 4) for chunk in chunks])
    assert whole.users[0] <= POP.users
    share = (weights * truth).sum() / weights.sum()
    assert whole.agency[0, 4] == pytest.approx(share, abs=0.01)  # frequency thins impressions at random
    assert campaign_queries(schema, config) == aggregates.queries  # seeded
    # the first k of n campaigns are the k campaigns measured alone
    fewer = measure_campaigns(schema, chunks, config.model_copy(update={"campaigns": 5}))
    assert fewer.queries == aggregates.queries[:5]
    assert np.array_equal(fewer.impressions, aggregates.impressions[:5])
    assert np.array_equal(fewer.labels, aggregates.labels[:, :5])


def test_campaign_aggregates_round_trip_and_reject_bad_input():
    rng = np.random.default_rng(0)
    aggregates, _ = _exact_aggregates(
        rng.uniform(0.5, 0.9, (2, 3)), rng.uniform(0.5, 0.9, (2, 3)), campaigns=5
    )
    again = CampaignAggregates.from_json(aggregates.to_json())
    assert np.allclose(again.labels, aggregates.labels) and np.array_equal(
        again.targeted, aggregates.targeted
    )
    assert np.allclose(again.population_labels, aggregates.population_labels)
    bad = aggregates.to_json()
    bad["campaigns"][1]["agency"][0] = 1.5
    bad["campaigns"][2]["targeted"] = ["dmp_x:s0"]
    with pytest.raises(InputError) as error:
        CampaignAggregates.from_json(bad)
    assert len(error.value.problems) == 2 and "within [0, 1]" in str(error.value)
    missing = aggregates.to_json()
    del missing["population"]
    with pytest.raises(InputError, match="not campaign aggregates"):
        CampaignAggregates.from_json(missing)
    short = aggregates.to_json()
    short["campaigns"][0]["labels"]["p0"] = [0.1]
    with pytest.raises(InputError, match="not campaign aggregates"):
        CampaignAggregates.from_json(short)
