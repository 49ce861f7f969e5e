"""open_store: one URI names the backend, so configs never import a store class."""

from __future__ import annotations

import numpy as np
import pytest

from fxrec.store import LMDBStore, MemoryStore, RedisStore, open_store


def test_lmdb_uri(tmp_path):
    with open_store(f"lmdb://{tmp_path}/emb", dim=4, namespace="user", keep_versions=2) as store:
        assert isinstance(store, LMDBStore) and store.path == tmp_path / "emb" and store.keep_versions == 2
        store.put(np.array([1]), np.ones((1, 4)), version=1, ts=0)
    with open_store(f"lmdb://{tmp_path}/emb", dim=4, namespace="user", keep_versions=2) as store:
        assert store.get(np.array([1])).found[0]


def test_redis_uri(redis_server):
    with open_store(redis_server.url, dim=4, namespace="uri", dtype="float16") as store:
        assert isinstance(store, RedisStore) and store.dtype == "float16"
        store.put(np.array([[1, 2]]), np.ones((1, 4)), version=1, ts=0)
        assert store.get(np.array([[1, 2]])).found[0]


def test_memory_uri():
    assert isinstance(open_store("memory://", dim=4), MemoryStore)


@pytest.mark.parametrize("uri", ["postgres://x", "/just/a/path", "lmdb://"])
def test_bad_uri(uri):
    with pytest.raises(ValueError, match="URI"):
        open_store(uri, dim=4)
