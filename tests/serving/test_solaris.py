"""SOLARIS: precomputed pair embeddings with the fallback chain pair -> user aggregate -> similar user
-> missing; each candidate's source is reported."""

from __future__ import annotations

import numpy as np
import torch
from fastapi.testclient import TestClient
from helpers import last_day_events, make_service, request_for

from fxrec.serving.app import create_app
from fxrec.serving.guard import GuardedStore, wait_until
from fxrec.serving.precompute import PairPredictor, PairReader, SimilarUsers
from fxrec.serving.schemas import Source
from fxrec.store import open_store


def test_similar_users_returns_the_mean_aggregate_of_the_nearest():
    similar = SimilarUsers(k=2)
    users = np.array([1, 2, 3, 4])
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.95, 0.05]], dtype=np.float32)
    aggregates = np.array([[10.0], [20.0], [30.0], [40.0]], dtype=np.float32)
    similar.rebuild(users, vectors, aggregates)
    # user 1 itself is excluded; its nearest others are 4 and 2
    np.testing.assert_allclose(similar.lookup(1, np.array([1.0, 0.0])), [30.0])
    assert similar.lookup(9, np.zeros(2)) is None


def test_pair_predictor_puts_recent_candidates_before_clicks(catalog):
    user = next(u for u, h in catalog.histories.items() if len(h.ts) >= 2)
    clicks = catalog.history_of(user).values["item_id"][::-1].tolist()
    predicted = PairPredictor(catalog, max_pairs=100).predict(user, [999_001, 999_002])
    assert predicted[:2].tolist() == [999_001, 999_002]
    assert predicted[2:].tolist() == list(dict.fromkeys(i for i in clicks if i not in (999_001, 999_002)))


def test_fallback_chain_in_order(tmp_path):
    def guarded(namespace: str) -> GuardedStore:
        return GuardedStore(
            open_store(f"lmdb://{tmp_path}", dim=2, namespace=namespace, keep_versions=1), namespace
        )

    pairs, aggregates = guarded("pairs"), guarded("aggregates")
    pairs.write(np.array([[1, 10]]), np.array([[1.0, 1.0]]), 1)
    aggregates.write(np.array([1, 2]), np.array([[2.0, 2.0], [3.0, 3.0]]), 1)
    similar = SimilarUsers(k=1)
    similar.rebuild(
        np.array([2]), np.array([[1.0, 0.0]], dtype=np.float32), np.array([[3.0, 3.0]], dtype=np.float32)
    )
    reader = PairReader(pairs, aggregates, similar)

    vectors, found, sources = reader.read(1, np.array([10, 11]), None)
    assert sources == [Source.pair_cache, Source.user_aggregate]
    np.testing.assert_allclose(vectors, [[1, 1], [2, 2]])
    vectors, found, sources = reader.read(5, np.array([10]), np.array([1.0, 0.1]))
    assert sources == [Source.similar_user] and found.all()
    np.testing.assert_allclose(vectors, [[3, 3]])
    vectors, found, sources = reader.read(5, np.array([10]), None)
    assert sources == [Source.missing] and not found.any()


def test_served_tae_comes_from_the_pair_cache_after_precompute(served_run, small_log, catalog, tmp_path):
    service = make_service(
        served_run,
        "vm_transfer",
        tmp_path,
        catalog=catalog,
        mode="async",
        refresh_interval=0.0,
        similar_users_every=0.2,
    )
    events = last_day_events(small_log)
    event = events.row(0, named=True)
    items = events["item_id"].unique().to_list()[:6]
    with TestClient(create_app(service)) as client:
        first = client.post("/v1/score", json=request_for(catalog, event, items)).json()
        assert set(first["sources"]["tae"]) <= {"similar-user", "missing"}
        assert wait_until(
            lambda: service.metrics.pairs.labels(event="computed")._value.get() >= len(items), 20
        )
        second = client.post("/v1/score", json=request_for(catalog, event, items)).json()
        assert second["sources"]["tae"] == {"pair-cache": len(items)}
        # a candidate never predicted for this user falls back to the user's aggregate
        history = catalog.history_of(event["user_id"])
        clicked = set(history.values["item_id"].tolist()) if history is not None else set()
        new_item = next(
            i for i in events["item_id"].unique().to_list() if i not in items and i not in clicked
        )
        third = client.post("/v1/score", json=request_for(catalog, event, [new_item])).json()
        assert third["candidates"][0]["sources"]["tae"] == "user-aggregate"
        # another user, never refreshed but with a published embedding, borrows from similar users
        others = [u for u in events["user_id"].unique().to_list() if u != event["user_id"]]
        assert wait_until(lambda: service.similar is not None and service.similar.size >= 1, 10)
        other = events.filter(events["user_id"] == others[0]).row(0, named=True)
        fourth = client.post("/v1/score", json=request_for(catalog, other)).json()
        assert fourth["candidates"][0]["sources"]["tae"] in ("similar-user", "missing")
        assert fourth["candidates"][0]["sources"]["sum_user"] in ("stale", "missing")


def test_pair_embeddings_match_the_fm_on_the_same_rows(served_run, small_log, catalog, tmp_path):
    """The precomputed TAE is the FM's own output for that (user, item) row."""
    service = make_service(served_run, "vm_transfer", tmp_path, catalog=catalog, mode="async")
    refresher = service.refresher
    assert refresher is not None
    users, items = np.array([int(catalog.user_ids()[0])] * 2), catalog.items.column("item_id").to_numpy()[:2]
    precomputed = refresher.pair_embeddings(users, items, ["feed", "feed"], [{}, {}])
    again = refresher.pair_embeddings(users[:1], items[:1], ["feed"], [{}])
    np.testing.assert_allclose(precomputed[:1], again, rtol=1e-5, atol=1e-6)
    assert precomputed.shape == (2, service.pair_store.dim)
    assert not torch.allclose(torch.from_numpy(precomputed[0]), torch.from_numpy(precomputed[1]))
