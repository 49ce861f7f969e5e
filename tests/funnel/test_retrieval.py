"""ALURE retrieval and its baselines: recall@K, neighbour search, and no look at day t or later."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fxrec.data.eventlog import day_start_ts
from fxrec.funnel import (
    AlureRetriever,
    CoEngagementRetriever,
    Engagements,
    PopularityRetriever,
    TwoTowerRetriever,
    evaluate_retrieval,
    exact_neighbours,
    hnsw_neighbours,
    published_user_embeddings,
    recall_at_k,
)
from fxrec.funnel.lists import merge

DAYS = ["2026-01-05", "2026-01-06", "2026-01-07", "2026-01-08", "2026-01-09"]


def test_recall_at_k_matches_its_definition():
    retrieved = np.array([[1, 2, 3, -1], [4, 5, 6, 7], [8, 9, -1, -1]])
    users = np.array([10, 20, 30])
    # user 10 clicked {2, 9}; user 20 clicked {7} (twice); user 30 clicked nothing; user 40 is not asked.
    clicked_user = np.array([10, 10, 20, 20, 40])
    clicked_item = np.array([2, 9, 7, 7, 1])
    assert recall_at_k(retrieved, users, clicked_user, clicked_item, 2) == pytest.approx((1 / 2 + 0 / 1) / 2)
    assert recall_at_k(retrieved, users, clicked_user, clicked_item, 4) == pytest.approx((1 / 2 + 1 / 1) / 2)


def test_merge_keeps_order_and_drops_duplicates():
    first = np.array([[3, 1, -1], [5, -1, -1]])
    out = merge(first, np.array([1, 2, 3, 4]), 4)
    assert out.tolist() == [[3, 1, 2, 4], [5, 1, 2, 3]]


def test_exact_and_hnsw_neighbours_agree_on_a_small_case():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 16))
    vectors = (centers[rng.integers(0, 8, 300)] + 0.3 * rng.normal(size=(300, 16))).astype(np.float32)
    exact, exact_sim = exact_neighbours(vectors, 10)
    approx, approx_sim = hnsw_neighbours(vectors, 10)
    assert (exact != np.arange(300)[:, None]).all() and (approx != np.arange(300)[:, None]).all()
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    assert overlap > 0.95
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert exact_sim[5, 0] == pytest.approx(float(unit[5] @ unit[exact[5, 0]]), abs=1e-5)
    assert (np.diff(exact_sim, axis=1) <= 1e-6).all()


def _world(tmp_path, rng, perturb_from: str | None = None):
    """Clicks over DAYS by users in 4 taste groups, and a publish dir with one write per click; from
    `perturb_from` on, every click and published embedding is replaced by noise."""
    users, items, ts = [], [], []
    groups = rng.integers(0, 4, 200)
    taste = rng.normal(size=(4, 8))
    publish = tmp_path / "publish"
    publish.mkdir(parents=True)
    for d, day in enumerate(DAYS):
        start = day_start_ts(day)
        u = rng.integers(0, 200, 600)
        i = groups[u] * 50 + rng.integers(0, 50, 600)
        t = start + np.sort(rng.integers(0, 86400, 600))
        vec = taste[groups[u]] + 0.1 * rng.normal(size=(600, 8))
        if perturb_from is not None and day >= perturb_from:
            i, vec = rng.integers(0, 200, 600), rng.normal(size=(600, 8))
        users.append(u), items.append(i), ts.append(t)
        table = pa.table(
            {
                "event_id": np.arange(600) + 600 * d,
                "user_id": u,
                "item_id": i,
                "ts": t,
                "fm_version": np.full(600, d),
                "user": pa.FixedSizeListArray.from_arrays(pa.array(vec.astype(np.float32).reshape(-1)), 8),
            }
        )
        pq.write_table(table, publish / f"day={day}.parquet")
    (publish / "publish.yaml").write_text("dims: {user: 8}\n")
    return Engagements.of(np.concatenate(users), np.concatenate(items), np.concatenate(ts)), publish


def _retrievers(publish):
    return [
        AlureRetriever(publish, neighbours=10, search="exact"),
        AlureRetriever(publish, neighbours=10, search="hnsw"),
        PopularityRetriever(),
        CoEngagementRetriever(),
        TwoTowerRetriever(200, 200, dim=8, epochs=1),
    ]


def test_retrieval_of_day_t_reads_nothing_from_day_t_or_later(tmp_path):
    day = DAYS[3]
    clean, clean_publish = _world(tmp_path / "a", np.random.default_rng(1))
    noisy, noisy_publish = _world(tmp_path / "b", np.random.default_rng(1), perturb_from=day)
    assert not np.array_equal(clean.item, noisy.item)  # the two worlds differ from day t on
    users = np.arange(200)
    for a, b in zip(_retrievers(clean_publish), _retrievers(noisy_publish), strict=True):
        a.prepare(day, clean.before(day))
        b.prepare(day, noisy.before(day))
        assert np.array_equal(a.retrieve(users, 100), b.retrieve(users, 100)), a.name
    # ALURE's graph of day t: embeddings written strictly before t only.
    before, vectors, written = published_user_embeddings(clean_publish, day)
    assert (written < day_start_ts(day)).all() and len(before) > 150
    again = published_user_embeddings(noisy_publish, day)
    assert np.array_equal(before, again[0]) and np.allclose(vectors, again[1])


def test_a_leaking_retriever_is_caught(tmp_path):
    """The check above would fail for a retriever that peeks at day t's clicks."""

    class Peeking(PopularityRetriever):
        def prepare(self, day, history):
            super().prepare(DAYS[-1], self.everything)

    day = DAYS[3]
    clean, _ = _world(tmp_path / "a", np.random.default_rng(1))
    noisy, _ = _world(tmp_path / "b", np.random.default_rng(1), perturb_from=day)
    a, b = Peeking(), Peeking()
    a.everything, b.everything = clean, noisy
    a.prepare(day, clean.before(day))
    b.prepare(day, noisy.before(day))
    assert not np.array_equal(a.retrieve(np.arange(5), 100), b.retrieve(np.arange(5), 100))


def test_graph_retrieval_finds_the_users_taste(tmp_path):
    engagements, publish = _world(tmp_path, np.random.default_rng(2))
    result = evaluate_retrieval(engagements, DAYS[3:], _retrievers(publish), ks=(10, 50), fill=False)
    assert result.recall["alure"][50] > 0.6  # the 50 ads of the user's group
    assert result.recall["alure"][50] > result.recall["popularity"][50] + 0.3
    assert set(result.recall) == {"alure", "popularity", "item_to_item", "two_tower"}
