"""One fixed-size binary record per key, shared by the LMDB and Redis backends.

A record holds a key's last k entries, newest first (slot 0 = newest; empty slots have version -1)::

    version  (k,)    int64   fm_version of each entry
    ts       (k,)    int64   write time in seconds
    vector   (k, d)  float32 | float16 | int8
    scale    (k,)    float32 per-vector symmetric int8 scale (1 for float storage)

Fixed size is the point: a batch of records joined into one bytes object decodes with a single
`np.frombuffer`, and the version logic (replace / push / ignore) runs as whole-array NumPy ops, so
neither reads nor writes do per-key Python work beyond the backend's own key lookups. No pickle:
the bytes are plain little-endian numbers anyone can decode.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable

import numpy as np

from fxrec.store.base import (
    EmbeddingStore,
    StoreMetadataError,
    StoreOptions,
    StoreRead,
    check_keys,
    check_put,
)

RECORD_FORMAT = 1  # saved in each store's metadata; bump when the record layout changes
STORAGE = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "int8": np.dtype("i1")}

# A backend's read-modify-write: old records (n,) in, (new records (n,), rows that changed (n,) bool) out.
Merge = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def quantize(vectors: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 -> stored (n, d) values and (n,) float32 scales.

    int8 is symmetric per vector: scale = max|x| / 127, so every element is within scale / 2 of x.
    """
    if dtype == "int8":
        scale = (np.abs(vectors).max(axis=1, initial=0.0) / 127.0).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1.0))
        stored = np.clip(np.rint(vectors / safe[:, None]), -127, 127).astype(np.int8)
        return stored, scale
    return vectors.astype(STORAGE[dtype]), np.ones(len(vectors), dtype=np.float32)


def dequantize(stored: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Stored values (..., d) and scales (...) -> float32 (..., d)."""
    vectors = stored.astype(np.float32)
    if stored.dtype == np.int8:
        vectors *= scale[..., None]
    return vectors


class RecordCodec:
    """Layout, encoding and the version-merge rule for one (dim, keep_versions, dtype)."""

    def __init__(self, options: StoreOptions):
        self.options = options
        k, d = options.keep_versions, options.dim
        self.dtype = np.dtype([
            ("version", "<i8", (k,)),
            ("ts", "<i8", (k,)),
            ("vector", STORAGE[options.dtype], (k, d)),
            ("scale", "<f4", (k,)),
        ])
        self.size = self.dtype.itemsize
        empty = np.zeros(1, dtype=self.dtype)
        empty["version"] = -1
        empty["ts"] = -1
        self.empty = empty.tobytes()  # what a missing key reads as: every slot empty

    def decode(self, buffer: bytes | bytearray | memoryview, n: int) -> np.ndarray:
        """n records joined end to end -> structured array (n,) (a read-only view of the buffer)."""
        if len(buffer) != n * self.size:
            raise ValueError(f"store holds records of {len(buffer) / max(n, 1):.0f} bytes, expected {self.size}; "
                             "it was written with another dim/dtype/keep_versions")
        return np.frombuffer(buffer, dtype=self.dtype, count=n)

    def encode(self, records: np.ndarray) -> list[bytes]:
        """Structured array (n,) -> one bytes value per record."""
        return np.ascontiguousarray(records).view(np.dtype((np.void, self.size))).tolist()

    def merger(self, vectors: np.ndarray, version: int, ts: np.ndarray) -> Merge:
        """The version rule as a function of the keys' current records (all rows at once)."""
        stored, scale = quantize(vectors, self.options.dtype)

        def merge(old: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            newest = old["version"][:, 0]
            push = newest < version  # includes empty records (version -1)
            replace = newest == version
            new = old.copy()
            for field in ("version", "ts", "vector", "scale"):
                new[field][push, 1:] = old[field][push, :-1]
            changed = push | replace
            new["version"][changed, 0] = version
            new["ts"][changed, 0] = ts[changed]
            new["vector"][changed, 0] = stored[changed]
            new["scale"][changed, 0] = scale[changed]
            return new, changed

        return merge

    def newest(self, records: np.ndarray, oldest_fresh_ts: int | None) -> StoreRead:
        version = records["version"][:, 0].copy()
        ts = records["ts"][:, 0].copy()
        found = version >= 0
        if oldest_fresh_ts is not None:
            found &= ts >= oldest_fresh_ts
        vectors = dequantize(records["vector"][:, 0], records["scale"][:, 0])
        if not found.all():
            vectors[~found] = 0.0
            version[~found] = -1
            ts[~found] = -1
        return StoreRead(vectors=vectors, found=found, version=version, ts=ts)

    def history(
        self, records: np.ndarray, oldest_fresh_ts: int | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Unexpired entries, newest first, packed to the front: vectors (n, k, d), versions (n, k), ts (n, k), counts (n,)."""
        versions = records["version"].copy()
        ts = records["ts"].copy()
        valid = versions >= 0
        if oldest_fresh_ts is not None:
            valid &= ts >= oldest_fresh_ts
        vectors = dequantize(records["vector"], records["scale"])
        if not valid.all():
            if (valid[:, 1:] & ~valid[:, :-1]).any():
                # Callers choose ts, so it need not fall down the slots: an expired entry can sit above
                # a fresh one. Pack the valid entries forward with a stable sort (newest first kept).
                order = np.argsort(~valid, axis=1, kind="stable")
                valid = np.take_along_axis(valid, order, axis=1)
                versions = np.take_along_axis(versions, order, axis=1)
                ts = np.take_along_axis(ts, order, axis=1)
                vectors = np.take_along_axis(vectors, order[:, :, None], axis=1)
            vectors[~valid] = 0.0
            versions[~valid] = -1
            ts[~valid] = -1
        return vectors, versions, ts, valid.sum(axis=1).astype(np.int64)

    def stabilized(self, records: np.ndarray, k: int, oldest_fresh_ts: int | None) -> StoreRead:
        vectors, versions, ts, counts = self.history(records, oldest_fresh_ts)
        window = np.minimum(counts, k)
        total = vectors[:, :k].sum(axis=1)  # history zeroes the slots past each key's count
        mean = total / np.maximum(window, 1).astype(np.float32)[:, None]
        return StoreRead(vectors=mean, found=window > 0, version=versions[:, 0], ts=ts[:, 0])


class RecordStore(EmbeddingStore):
    """The public API on top of two backend primitives over encoded records.

    Backends implement `_read_records` (one consistent snapshot of the keys' records, empty records
    for missing keys) and `_update_records` (an atomic read-merge-write of the keys' records).
    """

    def __init__(self, options: StoreOptions):
        self.options = options
        self.codec = RecordCodec(options)

    def _metadata_json(self) -> bytes:
        """The metadata record a backend stores once per namespace."""
        return json.dumps({**self.options.metadata(), "format": RECORD_FORMAT}).encode()

    def _check_metadata_json(self, stored: bytes, where: str) -> None:
        record = json.loads(stored)
        if record.get("format") != RECORD_FORMAT:
            raise StoreMetadataError(f"{where} uses record format {record.get('format')!r}; this fxrec reads format {RECORD_FORMAT}")
        self.options.check_metadata(record, where)

    @abstractmethod
    def _read_records(self, keys: np.ndarray) -> np.ndarray:
        """keys (n,) or (n, 2) int64 -> structured records (n,)."""

    @abstractmethod
    def _update_records(self, keys: np.ndarray, merge: Merge) -> None:
        """Atomically: read the keys' records, apply `merge`, write back the rows it marks changed."""

    def put(self, keys: np.ndarray, vectors: np.ndarray, version: int, ts: int | np.ndarray) -> None:
        keys, vectors, version, ts = check_put(keys, vectors, version, ts, self.options)
        if len(keys):
            self._update_records(keys, self.codec.merger(vectors, version, ts))

    def get(self, keys: np.ndarray, now: int | None = None) -> StoreRead:
        keys = check_keys(keys)
        return self.codec.newest(self._read_records(keys), self._oldest_fresh_ts(now))

    def get_history(self, keys: np.ndarray, now: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = check_keys(keys)
        vectors, versions, _, counts = self.codec.history(self._read_records(keys), self._oldest_fresh_ts(now))
        return vectors, versions, counts

    def get_stabilized(self, keys: np.ndarray, k: int | None = None, now: int | None = None) -> StoreRead:
        window = self._window(k)
        keys = check_keys(keys)
        return self.codec.stabilized(self._read_records(keys), window, self._oldest_fresh_ts(now))
