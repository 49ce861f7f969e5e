"""The EmbeddingStore contract, checked on every backend (LMDB, Redis, the in-memory reference)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fxrec.store import StoreMetadataError

DIM = 8
TS = 1_700_000_000


def vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def snapshot(store, keys: np.ndarray) -> tuple[np.ndarray, ...]:
    read = store.get(keys, now=TS)
    history = store.get_history(keys, now=TS)
    return (read.vectors, read.found, read.version, read.ts, *history)


def test_round_trip_user_keys(make_store):
    store = make_store(dim=DIM)
    keys = np.array([3, 10**12, -5, 0, 2**62], dtype=np.int64)
    values = vectors(5)
    store.put(keys, values, version=7, ts=np.arange(TS, TS + 5))
    query = np.array([0, 11, 10**12, 3, -5, 2**62], dtype=np.int64)  # shuffled, with a missing key
    read = store.get(query)
    assert read.vectors.shape == (6, DIM) and read.vectors.dtype == np.float32
    np.testing.assert_array_equal(read.found, [True, False, True, True, True, True])
    np.testing.assert_array_equal(read.vectors[[0, 2, 3, 4, 5]], values[[3, 1, 0, 2, 4]])
    np.testing.assert_array_equal(read.vectors[1], np.zeros(DIM))
    np.testing.assert_array_equal(read.version, [7, -1, 7, 7, 7, 7])
    np.testing.assert_array_equal(read.ts, [TS + 3, -1, TS + 1, TS, TS + 2, TS + 4])
    assert read.version.dtype == np.int64 and read.ts.dtype == np.int64


def test_round_trip_pair_keys_live_beside_user_keys(make_store):
    store = make_store(dim=DIM)
    pairs = np.array([[1, 2], [2, 1], [1, 3]], dtype=np.int64)
    store.put(pairs, vectors(3), version=1, ts=TS)
    store.put(np.array([1, 2]), vectors(2, seed=1), version=1, ts=TS)  # same ints as 1-D keys: no clash
    read = store.get(np.array([[2, 1], [1, 2], [3, 1], [1, 3]]))
    np.testing.assert_array_equal(read.found, [True, True, False, True])
    np.testing.assert_array_equal(read.vectors[[0, 1, 3]], vectors(3)[[1, 0, 2]])
    np.testing.assert_array_equal(store.get(np.array([1, 2])).vectors, vectors(2, seed=1))


def test_keeps_last_k_versions_newest_first_and_ignores_stale(make_store):
    store = make_store(dim=DIM, keep_versions=3)
    key = np.array([42])
    for version in range(1, 6):
        store.put(key, np.full((1, DIM), version, dtype=np.float32), version=version, ts=TS + version)
    history, versions, counts = store.get_history(key)
    assert history.shape == (1, 3, DIM)
    np.testing.assert_array_equal(versions, [[5, 4, 3]])
    np.testing.assert_array_equal(counts, [3])
    np.testing.assert_array_equal(history[0, :, 0], [5, 4, 3])

    before = snapshot(store, key)
    store.put(key, np.full((1, DIM), -1.0), version=4, ts=TS + 99)  # older than newest: ignored
    store.put(key, np.full((1, DIM), -1.0), version=2, ts=TS + 99)  # older than all kept: ignored
    for a, b in zip(before, snapshot(store, key), strict=True):
        np.testing.assert_array_equal(a, b)

    store.put(key, np.full((1, DIM), 50.0), version=5, ts=TS + 100)  # same as newest: replaces it
    _, versions, _ = store.get_history(key)
    read = store.get(key)
    np.testing.assert_array_equal(versions, [[5, 4, 3]])
    assert read.vectors[0, 0] == 50.0 and read.ts[0] == TS + 100 and read.version[0] == 5


def test_batch_mixes_new_replaced_and_stale_keys(make_store):
    store = make_store(dim=DIM, keep_versions=2)
    store.put(np.array([1, 2]), np.ones((2, DIM)), version=3, ts=TS)
    store.put(np.array([2]), np.full((1, DIM), 2.0), version=5, ts=TS)
    store.put(np.array([1, 2, 3]), np.full((3, DIM), 9.0), version=4, ts=TS + 1)
    _, versions, counts = store.get_history(np.array([1, 2, 3]))
    np.testing.assert_array_equal(versions, [[4, 3], [5, 3], [4, -1]])
    np.testing.assert_array_equal(counts, [2, 2, 1])
    np.testing.assert_array_equal(store.get(np.array([1, 2, 3])).vectors[:, 0], [9.0, 2.0, 9.0])


def test_repeated_key_in_a_batch_last_row_wins(make_store):
    store = make_store(dim=DIM)
    values = vectors(3)
    store.put(np.array([[4, 4], [5, 5], [4, 4]]), values, version=1, ts=TS)
    read = store.get(np.array([[4, 4], [5, 5]]))
    np.testing.assert_array_equal(read.vectors, values[[2, 1]])
    assert store.get_history(np.array([[4, 4]]))[2][0] == 1


def test_stabilized_is_mean_of_last_k(make_store):
    store = make_store(dim=DIM, keep_versions=3)
    keys = np.array([1, 2, 3])
    per_version = [vectors(3, seed=v) for v in range(4)]
    for version, values in enumerate(per_version):
        store.put(keys[: 3 - (version == 3)], values[: 3 - (version == 3)], version=version, ts=TS + version)
    store.put(np.array([9]), per_version[0][:1], version=0, ts=TS)
    last3 = np.mean(per_version[1:4], axis=0)
    read = store.get_stabilized(np.array([1, 3, 9, 77]))
    np.testing.assert_allclose(read.vectors[0], last3[0], atol=1e-6)
    np.testing.assert_allclose(read.vectors[1], np.mean(per_version[0:3], axis=0)[2], atol=1e-6)  # key 3 missed v3
    np.testing.assert_allclose(read.vectors[2], per_version[0][0], atol=1e-6)  # one version: itself
    np.testing.assert_array_equal(read.found, [True, True, True, False])
    np.testing.assert_array_equal(read.version, [3, 2, 0, -1])
    np.testing.assert_array_equal(read.ts, [TS + 3, TS + 2, TS, -1])
    two = store.get_stabilized(np.array([1]), k=2)
    np.testing.assert_allclose(two.vectors[0], np.mean([per_version[3][0], per_version[2][0]], axis=0), atol=1e-6)
    np.testing.assert_array_equal(store.get_stabilized(keys, k=1).vectors, store.get(keys).vectors)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="k must be"):
            store.get_stabilized(keys, k=bad)


def test_float16_and_int8_error_bounds(make_store):
    values = vectors(200, seed=3) * np.random.default_rng(4).uniform(0.01, 100, (200, 1)).astype(np.float32)
    keys = np.arange(200)
    half = make_store(dim=DIM, dtype="float16", namespace="half")
    half.put(keys, values, version=1, ts=TS)
    np.testing.assert_allclose(half.get(keys).vectors, values, rtol=2**-11, atol=1e-7)
    quarter = make_store(dim=DIM, dtype="int8", namespace="int8")
    quarter.put(keys, values, version=1, ts=TS)
    read = quarter.get(keys)
    assert read.vectors.dtype == np.float32
    bound = np.abs(values).max(axis=1, keepdims=True) / 254 * (1 + 1e-5)
    assert (np.abs(read.vectors - values) <= bound).all()
    quarter.put(keys[:1], np.zeros((1, DIM)), version=2, ts=TS)  # all-zero vector: scale 0, reads back zeros
    np.testing.assert_array_equal(quarter.get(keys[:1]).vectors, np.zeros((1, DIM)))
    np.testing.assert_allclose(quarter.get_stabilized(keys[:1]).vectors[0], read.vectors[0] / 2, rtol=1e-6)


def test_ttl_expires_entries(make_store):
    store = make_store(dim=DIM, ttl_seconds=100)
    store.put(np.array([1]), np.ones((1, DIM)), version=1, ts=TS)
    store.put(np.array([1]), np.full((1, DIM), 3.0), version=2, ts=TS + 50)
    store.put(np.array([2]), np.ones((1, DIM)), version=1, ts=TS)
    keys = np.array([1, 2])
    np.testing.assert_array_equal(store.get(keys, now=TS + 100).found, [True, True])  # exactly ttl old: fresh
    read = store.get(keys, now=TS + 101)
    np.testing.assert_array_equal(read.found, [True, False])
    np.testing.assert_array_equal(read.version, [2, -1])
    np.testing.assert_array_equal(read.ts, [TS + 50, -1])
    np.testing.assert_array_equal(read.vectors[1], np.zeros(DIM))
    _, versions, counts = store.get_history(keys, now=TS + 101)
    np.testing.assert_array_equal(versions, [[2, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(counts, [1, 0])
    stable = store.get_stabilized(keys, now=TS + 101)  # the expired version 1 leaves the window
    np.testing.assert_array_equal(stable.vectors[0], np.full(DIM, 3.0))
    assert not store.get(keys, now=TS + 151).found.any()
    fresh = make_store(dim=DIM, ttl_seconds=100, namespace="wallclock")
    fresh.put(np.array([5]), np.ones((1, DIM)), version=1, ts=int(time.time()))
    fresh.put(np.array([6]), np.ones((1, DIM)), version=1, ts=int(time.time()) - 1000)
    np.testing.assert_array_equal(fresh.get(np.array([5, 6])).found, [True, False])  # now defaults to the clock


BAD_PUTS = [
    ("vectors must have shape", dict(vectors=np.ones((3, DIM + 1)))),
    ("vectors must have shape", dict(vectors=np.ones((2, DIM)))),
    ("NaN or inf", dict(vectors=np.where(np.eye(3, DIM) > 0, np.nan, 1.0))),
    ("NaN or inf", dict(vectors=np.full((3, DIM), np.inf))),
    ("vectors must be real numbers", dict(vectors=np.full((3, DIM), "a"))),
    ("keys must be integers", dict(keys=np.array([1.0, 2.0, 3.0]))),
    ("keys must have shape", dict(keys=np.ones((3, 3), dtype=np.int64))),
    ("keys must have shape", dict(keys=np.ones((3, 2, 1), dtype=np.int64))),
    ("version must be a non-negative int", dict(version=-1)),
    ("version must be a non-negative int", dict(version=1.5)),
    ("ts must be integer seconds", dict(ts=1.5)),
    ("ts must be a scalar or have shape", dict(ts=np.array([TS, TS]))),
    ("ts must be non-negative", dict(ts=-3)),
]


@pytest.mark.parametrize("message,change", BAD_PUTS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(BAD_PUTS)])
def test_bad_put_raises_and_writes_nothing(make_store, message, change):
    store = make_store(dim=DIM)
    keys = np.array([1, 2, 3])
    store.put(keys, vectors(3), version=2, ts=TS)
    before = snapshot(store, keys)
    put = dict(keys=keys, vectors=vectors(3, seed=9), version=3, ts=TS + 1) | change
    with pytest.raises(ValueError, match=message):
        store.put(**put)
    for a, b in zip(before, snapshot(store, keys), strict=True):
        np.testing.assert_array_equal(a, b)


def test_float16_overflow_is_rejected(make_store):
    store = make_store(dim=DIM, dtype="float16")
    with pytest.raises(ValueError, match="float16 range"):
        store.put(np.array([1]), np.full((1, DIM), 1e6), version=1, ts=TS)
    assert not store.get(np.array([1])).found[0]


def test_bad_keys_on_read(make_store):
    store = make_store(dim=DIM)
    with pytest.raises(ValueError, match="keys must be integers"):
        store.get(np.array(["a"]))
    with pytest.raises(ValueError, match="keys must have shape"):
        store.get_history(np.zeros((2, 3), dtype=np.int64))


def test_empty_batches(make_store):
    store = make_store(dim=DIM)
    store.put(np.zeros(0, dtype=np.int64), np.zeros((0, DIM)), version=1, ts=TS)
    read = store.get(np.zeros(0, dtype=np.int64))
    assert read.vectors.shape == (0, DIM) and read.found.shape == (0,)
    assert store.get([]).vectors.shape == (0, DIM)
    history, versions, counts = store.get_history(np.zeros((0, 2), dtype=np.int64))
    assert history.shape == (0, 3, DIM) and versions.shape == (0, 3) and counts.shape == (0,)


@pytest.mark.parametrize("change", [dict(dim=DIM + 1), dict(dtype="float16"), dict(keep_versions=2)])
def test_reopen_with_other_layout_errors_and_same_layout_sees_data(make_store, backend, change):
    if backend == "memory":
        pytest.skip("the in-memory reference has nothing to reopen")
    store = make_store(dim=DIM, namespace="shared")
    store.put(np.array([1]), np.ones((1, DIM)), version=1, ts=TS)
    with pytest.raises(StoreMetadataError, match=next(iter(change))):
        make_store(**(dict(dim=DIM, namespace="shared") | change))
    again = make_store(dim=DIM, namespace="shared", ttl_seconds=10)  # TTL is a read-time choice
    assert again.get(np.array([1]), now=TS).found[0]
    other = make_store(dim=DIM + 1, namespace="another")  # namespaces are independent
    assert not other.get(np.array([1])).found[0]


@pytest.mark.parametrize("options", [dict(dim=0), dict(dim=DIM, dtype="bfloat16"), dict(dim=DIM, keep_versions=0),
                                     dict(dim=DIM, ttl_seconds=0)])
def test_bad_options(make_store, options):
    with pytest.raises(ValueError):
        make_store(**options)
