"""Calibration to the census of margins: the raked weights reproduce every kept one-way margin and each
stratum's users exactly, queries the strata decide stay exact, the calibrated estimator is unbiased up
to calibration's O(1/n) (many seeds), and the fall-back's census rates add up to the known totals."""

from __future__ import annotations

import numpy as np
import pytest

from fxrec.audience.calibration import margin_partitions
from fxrec.audience.evaluate import reach
from fxrec.audience.margins import MarginCounter, leaf_rates, pair_count
from fxrec.audience.population import PopulationConfig, audience_schema, generate_chunk, past_users
from fxrec.audience.query import Segment, parse
from fxrec.audience.reach import ReachIndex
from fxrec.audience.sample import census, draw
from fxrec.audience.schema import has_bit
from fxrec.audience.statistics import add
from fxrec.audience.stored_index import load_index, save_index
from fxrec.audience.strata import Stratification, candidate_dimensions, neyman

CONFIG = PopulationConfig(users=8000, chunk_size=4000, interests=40)
SCHEMA = audience_schema(CONFIG)
CHUNKS = [generate_chunk(CONFIG, i) for i in range(2)]


def _strata() -> Stratification:
    by_name = {d.name: d for d in candidate_dimensions(SCHEMA, past_users(CONFIG, 8000))}
    return Stratification((by_name["age band"], by_name["country (top 15)"], by_name["active surfaces"]))


def _margins(strata):
    counter = MarginCounter(SCHEMA, strata, ("interest",))
    for chunk in CHUNKS:
        counter.add(chunk)
    return counter.result()


def _sample(seed: int, budget: int = 1500):
    strata = _strata()
    counts = census(strata, CHUNKS)
    taken = neyman(counts.users, np.ones(len(counts.users)), budget, 2)
    sample = draw(strata, counts, taken, CHUNKS, seed=seed)
    sample.margins = _margins(strata)
    return sample


def _truth(text: str) -> int:
    return int(sum(reach(parse(text, SCHEMA), chunk)[0].sum() for chunk in CHUNKS))


def test_margins_count_every_value_per_dimension_cell():
    strata = _strata()
    margins = _margins(strata)
    everyone = np.concatenate([c.categorical["country"] for c in CHUNKS])
    table = margins.tables[("categorical", "country")]
    assert (table[0] == np.bincount(everyone, minlength=table.shape[1])).all()
    for d, offset in enumerate(margins.offsets):  # each dimension's cells add up to the one-way row
        assert (table[offset : offset + strata.dimensions[d].size].sum(0) == table[0]).all()
    k = 3
    holds = sum(int(has_bit(c.segments["interest"], k).sum()) for c in CHUNKS)
    assert margins.tables[("segment", "interest")][0, k] == holds


def test_calibrated_weights_reproduce_the_census_margins_and_strata():
    sample = _sample(seed=0)
    calibrated = sample.calibrate()
    weights = calibrated.weights
    by_stratum = np.bincount(sample.row_stratum, weights=weights, minlength=len(sample.census.users))
    np.testing.assert_allclose(by_stratum, sample.census.users, rtol=1e-6)
    coordinates = sample.strata.coordinates(sample.census.keys)
    partitions = margin_partitions(
        sample.margins, sample.rows, sample.census.users, sample.taken, coordinates
    )
    assert len(partitions) > 10  # categorical fields, age bands and segments
    for labels, targets in partitions:
        np.testing.assert_allclose(
            np.bincount(labels, weights=weights, minlength=len(targets)), targets, rtol=1e-6
        )
    # one margin directly: the users of each country the sample has rows of
    countries = np.bincount(sample.rows.categorical["country"], weights=weights, minlength=30)
    table = sample.margins.tables[("categorical", "country")][0]
    seen = np.bincount(sample.rows.categorical["country"], minlength=30) >= 10
    np.testing.assert_allclose(countries[seen], table[seen], rtol=1e-6)
    assert (weights > 0).all()


def test_calibrated_index_keeps_decided_queries_exact_and_matches_shards():
    sample = _sample(seed=1).calibrate()
    index = ReachIndex(SCHEMA, sample)
    for text in ["country:US", "age in 18..34 and not country:GB", "surface = video and age >= 65"]:
        answer = index.query(text)
        assert answer.exact and answer.users == _truth(text)
        assert answer.users_low == answer.users_high == answer.users
    # a query on one kept margin: the calibrated weights give its census total
    text = "interest:sports"
    assert abs(index.query(text).users - _truth(text)) < 1e-3 * _truth(text)
    # the sums add over any split of the rows: two shards' statistics give the in-process answer
    split = _Split(index.rows.split(2))
    for text in [
        "(interest:topic_030 or interest:topic_038) and not device:ios",
        "country:CH and interest:pets",
    ]:
        a, b = index.query(text), index.estimator.answer(text, split)
        assert abs(a.users - b.users) <= 1e-9 * max(a.users, 1) and a.fallback == b.fallback


class _Split:
    """Shards' statistics added up, as fxrec.audience.shards does, without Ray."""

    def __init__(self, shards):
        self.shards = shards

    def target_sums(self, targets):
        return add([s.target_sums(targets) for s in self.shards])

    def rate_sums(self, targets):
        return add([s.rate_sums(targets, lazy=False) for s in self.shards])

    def base_sums(self, surfaces):
        return add([s.base_sums(surfaces) for s in self.shards])


def test_calibrated_estimator_is_nearly_unbiased_over_many_samples():
    queries = [
        "(interest:topic_030 or interest:topic_038) and not device:ios",
        "interest:sports and gender:f",
    ]
    truth = np.array([_truth(q) for q in queries])
    estimates = []
    for seed in range(60):
        index = ReachIndex(SCHEMA, _sample(seed, budget=1200).calibrate(), min_support=0)
        estimates.append([index.query(q).users for q in queries])
    estimates = np.array(estimates)
    mean, error = estimates.mean(0), estimates.std(0) / np.sqrt(len(estimates))
    assert (np.abs(mean - truth) < 4 * error + 0.02 * truth).all(), (mean, truth, error)


def test_census_rates_add_up_to_the_dimension_totals():
    strata = _strata()
    counts = census(strata, CHUNKS)
    margins = _margins(strata)
    coordinates = strata.coordinates(counts.keys)
    leaf = Segment("interest", 5)
    cells = margins.leaf_counts(leaf)
    rate = leaf_rates(margins, cells, coordinates, counts.users)
    expected = counts.users * rate
    for d, offset in enumerate(margins.offsets):
        size = strata.dimensions[d].size
        got = np.bincount(coordinates[:, d], weights=expected, minlength=size)
        np.testing.assert_allclose(got, cells[offset : offset + size], atol=1e-3)


def test_pair_count_given_the_context_is_exact_for_whole_age_bands():
    strata = _strata()
    margins = _margins(strata)
    age = parse("age in 25..34", SCHEMA).node
    interest = Segment("interest", 2)
    both = pair_count(margins, margins.leaf_counts(age), margins.leaf_counts(interest))
    # an age range of whole bands lies in its bands: independent given the band is exact
    assert both == pytest.approx(_truth("age in 25..34 and interest:travel"), rel=1e-9)
    assert SCHEMA.segments["interest"][2] == "travel"


def test_index_folder_keeps_the_census_and_the_calibrated_weights(tmp_path):
    sample = _sample(seed=2).calibrate()
    index = ReachIndex(SCHEMA, sample)
    save_index(tmp_path / "idx", SCHEMA, sample, 2)
    stored = load_index(tmp_path / "idx")
    assert stored.margins is not None and stored.margins.contexts == sample.margins.contexts
    for family, table in sample.margins.tables.items():
        assert (stored.margins.tables[family] == table).all()
    estimator, rows = stored.estimator(), stored.rows()
    for text in ["country:CH and interest:pets", "age in 27..33 and interest:topic_030"]:
        a, b = index.query(text), estimator.answer(text, rows)
        assert abs(a.users - b.users) <= 1e-6 * max(a.users, 1)
