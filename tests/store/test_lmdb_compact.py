"""Compacting a published LMDB store: the same keys and records, fewer bytes, and writable again."""

from __future__ import annotations

import lmdb
import numpy as np
import pytest

from fxrec.store.lmdb_store import LMDBStore, compact


def _records(path) -> dict[bytes, dict[bytes, bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=16)
    with env.begin() as txn:
        names = [key for key, _ in txn.cursor()]
    out = {}
    for name in names:
        db = env.open_db(name, create=False)
        with env.begin(db=db) as txn:
            out[name] = dict(txn.cursor())
    env.close()
    return out


def test_compact_keeps_every_record_and_drops_the_replaced_pages(tmp_path):
    store = LMDBStore(tmp_path / "store", dim=16, namespace="user")
    rng = np.random.default_rng(0)
    for day in range(6):  # as a publish writes it: every user again each day
        users = np.arange(2000)
        store.put(
            users, rng.normal(size=(2000, 16)).astype(np.float32), version=day + 1, ts=1_700_000_000 + day
        )
    expected = store.get(np.arange(2100))
    with pytest.raises(RuntimeError, match="open in this process"):
        compact(tmp_path / "store")
    store.close()
    before = _records(tmp_path / "store")
    saved = compact(tmp_path / "store")
    assert saved > 0 and _records(tmp_path / "store") == before
    store = LMDBStore(tmp_path / "store", dim=16, namespace="user")
    got = store.get(np.arange(2100))
    np.testing.assert_array_equal(got.vectors, expected.vectors)
    np.testing.assert_array_equal(got.found, expected.found)
    store.put(np.array([5]), np.ones((1, 16), np.float32), version=9, ts=1_700_000_100)
    assert store.get(np.array([5])).vectors[0, 0] == 1.0
    store.close()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["data.mdb", "lock.mdb"]
