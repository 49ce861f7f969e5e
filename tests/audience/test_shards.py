"""Reach on Ray shards (local Ray, 2 CPUs): the sharded estimate is the in-process one to float precision,
fall-back included; killing a replica while queries stream fails no query and the shard gets its second
replica back; `fxrec audience reach` on Ray answers what --in-process answers."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fxrec.audience.population import (  # noqa: E402
    PopulationConfig,
    audience_schema,
    generate_chunk,
    past_users,
)
from fxrec.audience.query import parse  # noqa: E402
from fxrec.audience.reach import ReachEstimator, ReachIndex  # noqa: E402
from fxrec.audience.sample import census, draw  # noqa: E402
from fxrec.audience.shards import ShardedReachIndex  # noqa: E402
from fxrec.audience.strata import Stratification, candidate_dimensions, proportional  # noqa: E402
from fxrec.audience.workload import random_queries  # noqa: E402

pytestmark = pytest.mark.slow

CONFIG = PopulationConfig(users=8000, chunk_size=8000, interests=40)
SCHEMA = audience_schema(CONFIG)
THIN = ["interest:topic_035 and interest:topic_036 and country:BR", "interest:topic_039 and device:web"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def indexes(local_ray):
    """The same sample in process and on 2 shards x 2 replicas. A small proportional sample: some
    strata unsampled (they borrow from their parents), many queries below the fall-back's support."""
    population = generate_chunk(CONFIG, 0)
    by_name = {d.name: d for d in candidate_dimensions(SCHEMA, past_users(CONFIG, 8000))}
    strata = Stratification((by_name["age band"], by_name["country (top 15)"], by_name["active surfaces"]))
    counts = census(strata, [population])
    sample = draw(strata, counts, proportional(counts.users, 400), [population], seed=3)
    local = ReachIndex(SCHEMA, sample, min_support=10)
    estimator = ReachEstimator.of(SCHEMA, sample, min_support=10)
    sharded = ShardedReachIndex(estimator, local.rows.split(2), replicas=2, check_every=0.2)
    yield local, sharded
    sharded.close()


def test_the_sharded_estimate_is_the_in_process_one(indexes):
    local, sharded = indexes
    assert (local.estimator.taken == 0).any()  # unsampled strata: the fall-back always enters them
    queries = [q.text for q in random_queries(SCHEMA, 40, seed=9)] + THIN
    fallbacks = 0
    for text in queries:
        a, b = local.query(text).to_dict(), sharded.query(text).to_dict()
        assert a["support"] == b["support"] and a["fallback"] == b["fallback"] and a["exact"] == b["exact"]
        for key in ("users", "users_low", "users_high", "impressions", "impressions_low", "impressions_high"):
            assert np.isclose(a[key], b[key], rtol=1e-9, atol=1e-9), (text, key, a[key], b[key])
        fallbacks += a["fallback"]
    assert fallbacks >= 3  # the fall-back's path is compared too


def test_a_killed_replica_fails_no_query_and_is_replaced(indexes):
    local, sharded = indexes
    queries = [parse(q.text, SCHEMA) for q in random_queries(SCHEMA, 30, seed=4)] + [
        parse(t, SCHEMA) for t in THIN
    ]
    expected = [local.query(q).users for q in queries]
    victim = sharded.replicas(1)[0]
    failures, answered, done = [], [], threading.Event()

    def stream():
        round_ = 0
        while not done.is_set() or round_ < 2:
            for q, truth in zip(queries, expected, strict=True):
                try:
                    answered.append(abs(sharded.query(q).users - truth) <= 1e-6 * max(truth, 1))
                except Exception as error:  # noqa: BLE001 - counted: must not happen
                    failures.append(error)
            round_ += 1

    thread = threading.Thread(target=stream)
    thread.start()
    while len(answered) < 10 and thread.is_alive():
        time.sleep(0.01)
    ray.kill(victim)  # mid-stream
    deadline = time.monotonic() + 120
    while (sharded.replaced == 0 or min(sharded.live()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    thread.join(timeout=120)
    assert not failures, failures
    assert all(answered) and len(answered) >= 2 * len(queries)
    assert sharded.replaced >= 1 and sharded.live() == [2, 2]
    assert not any(actor is victim for actor in sharded.replicas(1))
    assert sharded.query(queries[0]).users == pytest.approx(expected[0], rel=1e-9)


def test_cli_reach_on_ray_answers_as_in_process(local_ray, tmp_path):
    from typer.testing import CliRunner

    from fxrec.cli import app

    runner = CliRunner()
    made = runner.invoke(app, ["audience", "population", "--out", str(tmp_path / "pop"), "--users", "3000"])
    assert made.exit_code == 0, made.output
    built = runner.invoke(
        app, ["audience", "build", "--population", str(tmp_path / "pop"), "--out", str(tmp_path / "idx")]
    )
    assert built.exit_code == 0, built.output
    text = "age in 18..34 and (interest:sports or interest:outdoor) and not country:US"
    answers = [
        json.loads(
            runner.invoke(
                app, ["audience", "reach", "-i", str(tmp_path / "idx"), "--json", *flags, text]
            ).output
        )
        for flags in (["--in-process"], ["--shards", "2", "--replicas", "1"])
    ]
    assert answers[1]["mode"] == "Ray, 2 shards x 1 replicas"
    assert answers[0]["users"] == pytest.approx(answers[1]["users"], rel=1e-9)


def test_a_shard_whose_only_replica_dies_comes_back_from_its_file(indexes, tmp_path):
    """One replica per shard, read from the index folder's shard files: killing it leaves the shard with
    none; the query waits for the supervisor, which starts a new actor from the shard file."""
    from fxrec.audience.shards import ShardFile
    from fxrec.audience.stored_index import load_index, save_index

    local, _ = indexes
    save_index(tmp_path / "idx", SCHEMA, local.sample, shards=2, card={"min_support": 10})
    stored = load_index(tmp_path / "idx")
    estimator = stored.estimator(min_support=10)
    files = [ShardFile(stored.path, s) for s in range(stored.shards)]
    with ShardedReachIndex(estimator, files, replicas=1, timeout=120, check_every=0.2) as sharded:
        text = THIN[0]
        before = sharded.query(text).users
        ray.kill(sharded.replicas(0)[0])
        deadline = time.monotonic() + 120
        while sharded.replaced == 0 and time.monotonic() < deadline:  # every query answers meanwhile
            assert sharded.query(text).users == pytest.approx(before, rel=1e-12)
        assert sharded.replaced == 1 and sharded.live() == [1, 1]
        assert sharded.query(text).users == pytest.approx(before, rel=1e-12)
    assert before == pytest.approx(local.query(text).users, rel=1e-9)
