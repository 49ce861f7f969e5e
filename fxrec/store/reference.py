"""MemoryStore: the plain, obviously-right reference for the embedding-store contract.

A dict from key to a newest-first list of entries, with the version rule, TTL and stabilization
written out key by key in Python. It shares no read/merge code with the fast backends, so tests can
compare LMDB and Redis against it on random operation sequences. It is also a handy store for unit
tests elsewhere (`open_store("memory://")`). A lock makes each put atomic for threads in one process.
"""

from __future__ import annotations

import threading

import numpy as np

from fxrec.store.base import EmbeddingStore, StorageDtype, StoreOptions, StoreRead, check_keys, check_put
from fxrec.store.records import dequantize, quantize

Key = int | tuple[int, int]
Entry = tuple[int, int, np.ndarray]  # (version, ts, float32 vector as read back)


class MemoryStore(EmbeddingStore):
    """In-process reference store; nothing is persisted."""

    def __init__(
        self, dim: int, keep_versions: int = 3, dtype: StorageDtype = "float32", ttl_seconds: int | None = None,
        namespace: str = "default",
    ):
        self.options = StoreOptions(dim=dim, keep_versions=keep_versions, dtype=dtype, ttl_seconds=ttl_seconds)
        self.namespace = namespace
        self._entries: dict[Key, list[Entry]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(row: np.ndarray) -> Key:
        return int(row) if row.ndim == 0 else (int(row[0]), int(row[1]))

    def put(self, keys: np.ndarray, vectors: np.ndarray, version: int, ts: int | np.ndarray) -> None:
        keys, vectors, version, ts = check_put(keys, vectors, version, ts, self.options)
        stored, scale = quantize(vectors, self.dtype)
        read_back = dequantize(stored, scale)
        with self._lock:
            for i, row in enumerate(keys):
                key = self._key(row)
                entries = self._entries.get(key, [])
                entry = (version, int(ts[i]), read_back[i].copy())
                if not entries or version > entries[0][0]:
                    entries = [entry, *entries][: self.keep_versions]
                elif version == entries[0][0]:
                    entries = [entry, *entries[1:]]
                else:
                    continue  # older than what is stored: a late publisher must not roll the key back
                self._entries[key] = entries

    def _fresh_entries(self, keys: np.ndarray, now: int | None) -> list[list[Entry]]:
        oldest = self._oldest_fresh_ts(now)
        with self._lock:
            rows = [list(self._entries.get(self._key(row), [])) for row in keys]
        return [[e for e in entries if oldest is None or e[1] >= oldest] for entries in rows]

    def get(self, keys: np.ndarray, now: int | None = None) -> StoreRead:
        keys = check_keys(keys)
        read = _empty_read(len(keys), self.dim)
        oldest = self._oldest_fresh_ts(now)
        with self._lock:
            newest = [self._entries.get(self._key(row), [None])[0] for row in keys]
        for i, entry in enumerate(newest):
            if entry is not None and (oldest is None or entry[1] >= oldest):
                read.version[i], read.ts[i], read.vectors[i] = entry
                read.found[i] = True
        return read

    def get_history(self, keys: np.ndarray, now: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = check_keys(keys)
        n, k = len(keys), self.keep_versions
        vectors = np.zeros((n, k, self.dim), dtype=np.float32)
        versions = np.full((n, k), -1, dtype=np.int64)
        counts = np.zeros(n, dtype=np.int64)
        for i, entries in enumerate(self._fresh_entries(keys, now)):
            counts[i] = len(entries)
            for j, (version, _, vector) in enumerate(entries):
                versions[i, j], vectors[i, j] = version, vector
        return vectors, versions, counts

    def get_stabilized(self, keys: np.ndarray, k: int | None = None, now: int | None = None) -> StoreRead:
        window = self._window(k)
        keys = check_keys(keys)
        read = _empty_read(len(keys), self.dim)
        for i, entries in enumerate(self._fresh_entries(keys, now)):
            if entries:
                read.vectors[i] = np.mean([vector for _, _, vector in entries[:window]], axis=0)
                read.version[i], read.ts[i] = entries[0][0], entries[0][1]
                read.found[i] = True
        return read

    def close(self) -> None:
        self._entries = {}


def _empty_read(n: int, dim: int) -> StoreRead:
    return StoreRead(
        vectors=np.zeros((n, dim), dtype=np.float32),
        found=np.zeros(n, dtype=bool),
        version=np.full(n, -1, dtype=np.int64),
        ts=np.full(n, -1, dtype=np.int64),
    )
