"""LMDBStore: the embedded default embedding store, one LMDB environment (a folder) on local disk.

Why LMDB: a memory-mapped B+tree with MVCC, so readers in any number of threads and processes never
block the writer or each other, and each reader sees one committed snapshot. A put is one write
transaction, which is the atomicity the contract asks for: a reader sees the whole batch or none of it.

Layout inside the environment (several stores share one environment, one pair of named databases
per namespace; LMDB allows each environment to be open once per process, so stores on the same path
share one handle through a small registry)::

    __fxrec_meta__      namespace -> JSON {dim, dtype, keep_versions, format}
    <namespace>/ids     int64 key (native byte order, MDB_INTEGERKEY) -> fixed-size record
    <namespace>/pairs   (int64, int64) key                             -> fixed-size record

Records are the fixed-size binary records of `records.py` (no pickle). A batched get is one read
transaction: the keys' bytes come from one NumPy view, the values are looked up by `txn.get` mapped
over the keys (missing keys yield the empty record, so there is no per-key branching in Python) and
joined into one buffer that decodes with a single `np.frombuffer`. Keys are looked up in sorted order,
which keeps the B+tree's upper pages hot in cache across a batch. What remains is one B+tree lookup
per key (~1 us at 1M keys on the 2-core dev box, mostly cache and TLB misses), which bounds a get at
roughly 0.5-1M keys/s: see bench/store.py.

The map is a large sparse reservation (the file grows with the data) and is grown when a write runs
out of room; growing replaces the memory map, so it waits for running reads in this process. A store
written once and then only read (`fxrec publish`'s) can be `compact`ed: LMDB's copy-on-write leaves
the pages of every replaced version behind, a third of the file after a day-by-day publish.
Processes: open the store in each process after forking (LMDB environments must not cross a fork).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import lmdb
import numpy as np

from fxrec.store.base import StorageDtype, StoreOptions
from fxrec.store.records import Merge, RecordStore

META_DB = b"__fxrec_meta__"
DEFAULT_MAP_SIZE = 64 << 30  # sparse on Linux: the file grows with the data, not with the map


class _ResizeGuard:
    """Reads run side by side; replacing the memory map (growing it) waits until none is running and holds
    new ones back, because a resize invalidates every open transaction of the process."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._condition:
            while self._resizing:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if self._readers == 0:
                    self._condition.notify_all()

    @contextmanager
    def resizing(self) -> Iterator[None]:
        with self._condition:
            self._resizing = True
            while self._readers:
                self._condition.wait()
        try:
            yield
        finally:
            with self._condition:
                self._resizing = False
                self._condition.notify_all()


@dataclass
class _SharedEnv:
    env: lmdb.Environment
    write_lock: threading.RLock  # one writer per environment; LMDB's own lock would block with the GIL held
    resize_guard: _ResizeGuard
    users: int


_ENVS: dict[str, _SharedEnv] = {}
_ENVS_LOCK = threading.Lock()


def _acquire_env(path: Path, map_size: int, sync: bool, max_dbs: int, max_readers: int) -> tuple[str, _SharedEnv]:
    path.mkdir(parents=True, exist_ok=True)
    name = os.path.realpath(path)
    with _ENVS_LOCK:
        shared = _ENVS.get(name)
        if shared is None:
            env = lmdb.open(
                name, map_size=map_size, max_dbs=max_dbs, max_readers=max_readers,
                readahead=False,  # random point reads: OS readahead only pollutes the page cache
                sync=sync, metasync=sync, lock=True, subdir=True,
            )
            shared = _ENVS[name] = _SharedEnv(env=env, write_lock=threading.RLock(), resize_guard=_ResizeGuard(), users=0)
        shared.users += 1
        return name, shared


def _release_env(name: str) -> None:
    with _ENVS_LOCK:
        shared = _ENVS.get(name)
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0:
            shared.env.close()
            del _ENVS[name]


def compact(path: str | Path) -> int:
    """Rewrite the LMDB folder `path` without its free pages (the same keys and records, lossless);
    returns the bytes saved. The store must be closed in this process, and open in no other."""
    path = Path(path)
    name = os.path.realpath(path)
    with _ENVS_LOCK:
        if name in _ENVS:
            raise RuntimeError(f"LMDB store {path} is open in this process; close it before compacting")
    data = path / "data.mdb"
    before = data.stat().st_size
    tmp = path / ".compact"
    tmp.mkdir(exist_ok=True)
    try:
        env = lmdb.open(name, readonly=True, lock=False, subdir=True, max_dbs=0)
        try:
            env.copy(str(tmp), compact=True)
        finally:
            env.close()
        os.replace(tmp / "data.mdb", data)
    finally:
        for leftover in tmp.iterdir():
            leftover.unlink()
        tmp.rmdir()
    return before - data.stat().st_size


class LMDBStore(RecordStore):
    """Versioned embedding store in an LMDB folder.

    Example:
        >>> store = LMDBStore(tmp / "emb", dim=4, namespace="user")
        >>> store.put(np.array([7, 9]), np.ones((2, 4)), version=1, ts=1_700_000_000)
        >>> store.get(np.array([7, 8])).found
        array([ True, False])
    """

    def __init__(
        self,
        path: str | Path,
        dim: int,
        keep_versions: int = 3,
        dtype: StorageDtype = "float32",
        ttl_seconds: int | None = None,
        namespace: str = "default",
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
        max_dbs: int = 128,
        max_readers: int = 256,
    ):
        super().__init__(StoreOptions(dim=dim, keep_versions=keep_versions, dtype=dtype, ttl_seconds=ttl_seconds))
        if not isinstance(namespace, str) or not namespace or "/" in namespace or len(namespace) > 200:
            raise ValueError(f"namespace must be a non-empty string of at most 200 characters without '/', got {namespace!r}")
        self.path = Path(path)
        self.namespace = namespace
        self._env_name, self._shared = _acquire_env(self.path, map_size, sync, max_dbs, max_readers)
        self._closed = False
        try:
            self._ids, self._pairs = self._open_namespace()
        except BaseException:
            self.close()
            raise

    def _open_namespace(self) -> tuple[lmdb._Database, lmdb._Database]:
        env = self._shared.env
        with self._shared.write_lock, env.begin(write=True) as txn:
            meta_db = env.open_db(META_DB, txn=txn, create=True)
            stored = txn.get(self.namespace.encode(), db=meta_db)
            if stored is None:
                txn.put(self.namespace.encode(), self._metadata_json(), db=meta_db)
            else:
                self._check_metadata_json(stored, f"LMDB store {self.path} namespace {self.namespace!r}")
            ids = env.open_db(f"{self.namespace}/ids".encode(), txn=txn, create=True, integerkey=True)
            pairs = env.open_db(f"{self.namespace}/pairs".encode(), txn=txn, create=True)
        return ids, pairs

    def _env(self) -> lmdb.Environment:
        if self._closed:
            raise RuntimeError(f"LMDB store {self.path} namespace {self.namespace!r} is closed")
        return self._shared.env

    def _resize(self, map_size: int) -> None:
        """Grow the map (or, with 0, adopt the size another process grew it to) with no transaction open."""
        with self._shared.write_lock, self._shared.resize_guard.resizing():
            self._shared.env.set_mapsize(map_size)

    @staticmethod
    def _key_bytes(keys: np.ndarray) -> list[bytes]:
        """int64 keys (n,) or (n, 2) -> one bytes object per key, without a Python loop."""
        width = 8 * (keys.shape[1] if keys.ndim == 2 else 1)
        return np.ascontiguousarray(keys).view(np.dtype((np.void, width))).ravel().tolist()

    def _read_records(self, keys: np.ndarray) -> np.ndarray:
        n = len(keys)
        if n == 0:
            return self.codec.decode(b"", 0)
        order = np.argsort(keys, kind="stable") if keys.ndim == 1 else np.lexsort(keys.T[::-1])
        key_bytes = self._key_bytes(keys[order])
        db = self._ids if keys.ndim == 1 else self._pairs
        env = self._env()
        try:
            with self._shared.resize_guard.reading(), env.begin(db=db) as txn:
                buffer = b"".join(map(txn.get, key_bytes, repeat(self.codec.empty, n)))
        except lmdb.MapResizedError:  # another process grew the map: adopt its size and read again
            self._resize(0)
            with self._shared.resize_guard.reading(), env.begin(db=db) as txn:
                buffer = b"".join(map(txn.get, key_bytes, repeat(self.codec.empty, n)))
        records = np.empty(n, dtype=self.codec.dtype)
        records[order] = self.codec.decode(buffer, n)
        return records

    def _update_records(self, keys: np.ndarray, merge: Merge) -> None:
        n = len(keys)
        key_bytes = self._key_bytes(keys)
        db = self._ids if keys.ndim == 1 else self._pairs
        env = self._env()
        with self._shared.write_lock:
            for _ in range(8):
                try:
                    with env.begin(write=True, db=db) as txn:
                        old = self.codec.decode(b"".join(map(txn.get, key_bytes, repeat(self.codec.empty, n))), n)
                        new, changed = merge(old)
                        rows = np.flatnonzero(changed)
                        if len(rows):
                            values = self.codec.encode(new[rows])
                            txn.cursor().putmulti(zip([key_bytes[i] for i in rows], values, strict=True), overwrite=True)
                    return
                except lmdb.MapFullError:
                    # The transaction was aborted, so nothing of this batch is visible; grow and redo it.
                    self._resize(2 * env.info()["map_size"])
                except lmdb.MapResizedError:  # another process grew the map: adopt its size and redo
                    self._resize(0)
            raise RuntimeError(f"LMDB store {self.path}: could not make room for the batch after resizing the map 8 times")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release_env(self._env_name)

    def __repr__(self) -> str:
        return f"LMDBStore({str(self.path)!r}, namespace={self.namespace!r}, dim={self.dim}, dtype={self.dtype!r})"
