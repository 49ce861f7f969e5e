"""Reach estimation: the weighted-count estimator is unbiased (many sample seeds, exact counts on a small
population), decided strata count exactly, the fall-back engages exactly below the support threshold,
Neyman allocation keeps its minimum and budget. (The theta baseline: test_sketches.py.)"""

from __future__ import annotations

import numpy as np

from fxrec.audience.evaluate import reach
from fxrec.audience.population import PopulationConfig, audience_schema, generate_chunk, past_users
from fxrec.audience.query import parse
from fxrec.audience.reach import ReachIndex
from fxrec.audience.sample import census, draw
from fxrec.audience.strata import (
    Stratification,
    candidate_dimensions,
    learn_stratification,
    neyman,
    proportional,
)
from fxrec.audience.workload import random_queries

CONFIG = PopulationConfig(users=8000, chunk_size=8000, interests=40)
SCHEMA = audience_schema(CONFIG)
POPULATION = generate_chunk(CONFIG, 0)
QUERIES = [
    "(interest:topic_030 or interest:topic_038) and not device:ios",
    "country:US and age in 20..30",
    "interest:sports and surface = video",
    "not surface = feed and gender:f",
]


def _strata() -> Stratification:
    by_name = {d.name: d for d in candidate_dimensions(SCHEMA, past_users(CONFIG, 8000))}
    return Stratification((by_name["age band"], by_name["country (top 15)"], by_name["active surfaces"]))


def _truth(text: str) -> tuple[int, int]:
    reached, impressions = reach(parse(text, SCHEMA), POPULATION)
    return int(reached.sum()), int(impressions.sum())


def test_weighted_count_is_unbiased_over_many_samples():
    strata = _strata()
    counts = census(strata, [POPULATION])
    rng = np.random.default_rng(0)
    taken = neyman(counts.users, rng.random(len(counts.users)), 1500, 2)  # unequal weights on purpose
    assert (taken > 0).all()
    estimates, covered = [], []
    for seed in range(150):
        index = ReachIndex(SCHEMA, draw(strata, counts, taken, [POPULATION], seed=seed), min_support=0)
        answers = [index.query(q) for q in QUERIES]
        estimates.append([[a.users, a.impressions] for a in answers])
        covered.append(
            [a.users_low <= _truth(q)[0] <= a.users_high for a, q in zip(answers, QUERIES, strict=True)]
        )
    estimates = np.array(estimates)  # [seeds, queries, 2]
    truth = np.array([_truth(q) for q in QUERIES])
    mean, error = estimates.mean(0), estimates.std(0) / np.sqrt(len(estimates))
    assert (np.abs(mean - truth) < 4 * error + 1e-9).all(), (mean, truth, error)
    assert np.mean(covered) > 0.85  # the 95% interval covers the truth about as often as it says


def test_decided_strata_count_exactly():
    strata = _strata()
    counts = census(strata, [POPULATION])
    index = ReachIndex(
        SCHEMA,
        draw(strata, counts, neyman(counts.users, np.ones(len(counts.users)), 500, 2), [POPULATION], seed=1),
    )
    for text in ["country:US", "age in 18..34 and not country:GB", "surface = video and age >= 65"]:
        answer = index.query(text)
        assert answer.exact and (answer.users, answer.impressions) == _truth(text)
        assert answer.users_low == answer.users_high == answer.users


def test_fallback_engages_exactly_below_the_support_threshold():
    strata = _strata()
    counts = census(strata, [POPULATION])
    taken = neyman(counts.users, np.ones(len(counts.users)), 900, 1)
    assert (taken > 0).all()  # no unsampled strata: at the threshold the answer is the plain count
    sample = draw(strata, counts, taken, [POPULATION], seed=2)
    query = parse("interest:topic_020 and device:android", SCHEMA)
    support = ReachIndex(SCHEMA, sample, min_support=0).query(query).support
    assert support > 0
    at = ReachIndex(SCHEMA, sample, min_support=support).query(query)
    below = ReachIndex(SCHEMA, sample, min_support=support + 1).query(query)
    assert not at.fallback and below.fallback
    assert at.support == below.support == support
    plain = ReachIndex(SCHEMA, sample, min_support=0).query(query)
    assert (at.users, at.impressions) == (plain.users, plain.impressions)
    assert below.users > 0 and below.users != plain.users


def test_fallback_answers_where_the_sample_has_no_one():
    strata = _strata()
    counts = census(strata, [POPULATION])
    sample = draw(strata, counts, proportional(counts.users, 400), [POPULATION], seed=3)
    index = ReachIndex(SCHEMA, sample, min_support=10)
    query = parse("interest:topic_035 and interest:topic_036 and country:BR", SCHEMA)
    rows, _ = reach(query, sample.rows)
    answer = index.query(query)
    assert rows.sum() == answer.support < 10 and answer.fallback and answer.users > 0


def test_neyman_allocation_keeps_minimum_budget_and_caps():
    population = np.array([5, 100, 1000, 10_000, 3])
    sigma = np.array([1.0, 0.0, 0.5, 0.1, 2.0])
    taken = neyman(population, sigma, 600, 4)
    assert taken.sum() == 600
    assert (taken >= np.minimum(4, population)).all() and (taken <= population).all()
    assert taken[2] / population[2] > taken[3] / population[3]  # more where the variance is
    assert proportional(population, 1000).sum() == 1000
    assert (neyman(population, sigma, 20_000, 4) == population).all()


def test_learned_strata_lower_the_workload_variance():
    pilot = past_users(CONFIG, 8000)
    queries = random_queries(SCHEMA, 60, seed=1)
    strata = learn_stratification(SCHEMA, pilot, queries, population=CONFIG.users, budget=800, minimum=2)
    assert 1 <= strata.depth <= 6
    assert len(census(strata, [POPULATION]).keys) <= 800 // (4 * 2) * 2  # about the cap (unseen strata aside)


def test_segment_count_dimension():
    from fxrec.audience.schema import pack_bits
    from fxrec.audience.strata import segment_count

    flags = np.random.default_rng(0).random((50, 130)) < 0.3
    assert (segment_count(pack_bits(flags, 3)) == flags.sum(1)).all()
    dimensions = candidate_dimensions(SCHEMA, POPULATION, segment_counts=True)
    counted = [d for d in dimensions if d.kind == "segment count"]
    assert len(counted) == 1 and counted[0].coordinate(POPULATION).max() == counted[0].size - 1


def test_build_reach_index_from_chunks():
    from fxrec.audience.build import build_reach_index
    from fxrec.audience.population import iter_chunks

    config = PopulationConfig(users=12_000, chunk_size=4000, interests=40)
    schema = audience_schema(config)
    index = build_reach_index(
        schema,
        lambda: iter_chunks(config),
        past_users(config, 6000),
        random_queries(schema, 40, seed=1),
        budget=1500,
    )
    assert len(index.sample.rows) == 1500 and index.sample.census.users.sum() == 12_000
    everyone = index.query("country:US or not country:US")
    assert everyone.exact and everyone.users == 12_000
    text = "age in 18..24 and (interest:sports or interest:outdoor) and not country:US and surface = video"
    answer = index.query(text)
    truth = sum(int(reach(parse(text, schema), chunk)[0].sum()) for chunk in iter_chunks(config))
    assert abs(answer.users - truth) < 0.5 * truth
