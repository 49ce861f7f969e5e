"""The embedding store contract: versioned vectors per key, read in batches, written atomically.

The FM publishes user embeddings (SUM) and (user, item) pair embeddings (SOLARIS) here; VMs and the
server read them back. Every backend (LMDB, Redis, the in-memory reference) implements the one
abstract base below, so the rest of fxrec never names a backend (the Feast online-store pattern).

Semantics every backend keeps:

- keys are int64, shape (n,) (user ids) or (n, 2) ((user, item) pairs); both may share one store.
- each key keeps its last `keep_versions` (k) entries, newest first. A put with the key's newest
  version replaces that entry; a newer version pushes a new entry and drops the oldest beyond k; an
  older version than the newest stored is ignored (a late publisher must not roll a key back).
- every entry carries its fm_version and its write time `ts` (seconds); with `ttl_seconds` set, an
  entry whose ts is older than now - ttl reads as not found.
- a put is atomic: a concurrent reader sees all of a batch or none of it, never a torn vector.
- bad input raises ValueError naming what is wrong, and nothing is written.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np

StorageDtype = Literal["float32", "float16", "int8"]
STORAGE_DTYPES: tuple[str, ...] = ("float32", "float16", "int8")
FLOAT16_MAX = float(np.finfo(np.float16).max)


class StoreUnavailable(ConnectionError):
    """The store's server cannot be reached right now; callers (the server) fall back and retry later."""


class StoreMetadataError(ValueError):
    """A store was reopened with a dim / dtype / keep_versions different from what it holds."""


@dataclass
class StoreRead:
    """One batched read; row i answers keys[i].

    vectors: (n, d) float32, zeros where not found
    found:   (n,) bool, False for missing or expired-by-TTL keys
    version: (n,) int64 fm_version of the value, -1 where not found
    ts:      (n,) int64 write time in seconds, -1 where not found
    """

    vectors: np.ndarray
    found: np.ndarray
    version: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return len(self.found)


@dataclass(frozen=True)
class StoreOptions:
    """What a store holds; saved as the store's metadata record and checked on reopen."""

    dim: int
    keep_versions: int = 3
    dtype: StorageDtype = "float32"
    ttl_seconds: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int | np.integer) or self.dim < 1:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        if not isinstance(self.keep_versions, int | np.integer) or self.keep_versions < 1:
            raise ValueError(f"keep_versions must be a positive int, got {self.keep_versions!r}")
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {self.dtype!r}")
        if self.ttl_seconds is not None and (not isinstance(self.ttl_seconds, int | np.integer) or self.ttl_seconds < 1):
            raise ValueError(f"ttl_seconds must be a positive int or None, got {self.ttl_seconds!r}")

    def metadata(self) -> dict[str, int | str]:
        """The fields that fix the record layout; the TTL is a read-time choice and may differ per reader."""
        return {"dim": int(self.dim), "dtype": self.dtype, "keep_versions": int(self.keep_versions)}

    def check_metadata(self, stored: dict[str, int | str], where: str) -> None:
        expected = self.metadata()
        diffs = [f"{name}={stored.get(name)!r} (asked for {value!r})" for name, value in expected.items() if stored.get(name) != value]
        if diffs:
            raise StoreMetadataError(
                f"{where} holds embeddings with {', '.join(diffs)}; open it with the stored settings "
                "or use another namespace / path"
            )


class EmbeddingStore(ABC):
    """Versioned embedding store: batched, atomic puts; batched reads of the newest, the history, or the
    stabilized (mean of the last k versions) vector per key."""

    options: StoreOptions

    @property
    def dim(self) -> int:
        return self.options.dim

    @property
    def keep_versions(self) -> int:
        return self.options.keep_versions

    @property
    def dtype(self) -> str:
        return self.options.dtype

    @property
    def ttl_seconds(self) -> int | None:
        return self.options.ttl_seconds

    @abstractmethod
    def put(self, keys: np.ndarray, vectors: np.ndarray, version: int, ts: int | np.ndarray) -> None:
        """Write `vectors` (n, d) for `keys` (n,) or (n, 2) as fm_version `version`, written at `ts` (seconds).

        Atomic: all of the batch or none of it. If a key repeats in the batch, its last row wins.
        """

    @abstractmethod
    def get(self, keys: np.ndarray, now: int | None = None) -> StoreRead:
        """The newest version per key."""

    @abstractmethod
    def get_history(self, keys: np.ndarray, now: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to k stored entries per key, newest first.

        Returns vectors (n, k, d) float32 (zeros as padding), versions (n, k) int64 (-1 as padding)
        and counts (n,) int64; expired entries (TTL) are left out.
        """

    @abstractmethod
    def get_stabilized(self, keys: np.ndarray, k: int | None = None, now: int | None = None) -> StoreRead:
        """Mean of the last k (default keep_versions) unexpired entries per key: SUM's stabilization,
        which smooths the jump when a new FM snapshot is published. version and ts are the newest entry's."""

    @abstractmethod
    def close(self) -> None:
        """Release connections / the LMDB environment; the store is unusable afterwards."""

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _window(self, k: int | None) -> int:
        if k is None:
            return self.keep_versions
        if not isinstance(k, int | np.integer) or not 1 <= k <= self.keep_versions:
            raise ValueError(f"k must be an int in [1, keep_versions={self.keep_versions}], got {k!r}")
        return int(k)

    def _oldest_fresh_ts(self, now: int | None) -> int | None:
        """Entries with ts below this read as not found; None when there is no TTL."""
        if self.ttl_seconds is None:
            return None
        now = int(time.time()) if now is None else int(now)
        return now - int(self.ttl_seconds)


def check_keys(keys: np.ndarray) -> np.ndarray:
    """Keys as a contiguous int64 array of shape (n,) or (n, 2); ValueError otherwise."""
    array = np.asarray(keys)
    if array.size == 0 and array.dtype.kind == "f":  # np.asarray([]) is float64: an empty batch is fine
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"keys must be integers (int64 ids), got dtype {array.dtype}")
    if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] != 2):
        raise ValueError(f"keys must have shape (n,) or (n, 2), got {array.shape}")
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError("keys must fit in int64; got uint64 values above 2**63 - 1")
    return np.ascontiguousarray(array, dtype=np.int64)


def check_put(
    keys: np.ndarray, vectors: np.ndarray, version: int, ts: int | np.ndarray, options: StoreOptions
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Validate one put; return (keys, vectors float32 (n, d), version, ts int64 (n,)) with repeated keys
    reduced to their last row. Raises ValueError naming the bad argument before anything is written."""
    keys = check_keys(keys)
    n = len(keys)
    array = np.asarray(vectors)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"vectors must be real numbers, got dtype {array.dtype}")
    if array.shape != (n, options.dim):
        raise ValueError(f"vectors must have shape (n, dim) = ({n}, {options.dim}) to match the keys, got {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"vectors have NaN or inf (or values beyond float32) in {len(bad)} rows, e.g. rows {bad[:5].tolist()}")
    if options.dtype == "float16":
        too_big = np.abs(array).max(axis=1, initial=0.0) > FLOAT16_MAX
        if too_big.any():
            bad = np.flatnonzero(too_big)
            raise ValueError(f"vectors exceed the float16 range (|x| > {FLOAT16_MAX}) in rows {bad[:5].tolist()}")
    if isinstance(version, bool) or not isinstance(version, int | np.integer) or version < 0:
        raise ValueError(f"version must be a non-negative int (the fm_version), got {version!r}")
    ts_array = np.asarray(ts)
    if ts_array.dtype.kind not in "iu":
        raise ValueError(f"ts must be integer seconds, got dtype {ts_array.dtype}")
    if ts_array.ndim == 0:
        ts_array = np.full(n, int(ts_array), dtype=np.int64)
    elif ts_array.shape != (n,):
        raise ValueError(f"ts must be a scalar or have shape (n,) = ({n},), got {ts_array.shape}")
    ts_array = ts_array.astype(np.int64)
    if n and ts_array.min() < 0:
        raise ValueError("ts must be non-negative seconds (-1 marks 'not found' in reads)")
    last = last_occurrence(keys)
    if last is not None:
        keys, array, ts_array = keys[last], array[last], ts_array[last]
    return keys, array, int(version), ts_array


def last_occurrence(keys: np.ndarray) -> np.ndarray | None:
    """Row indices keeping only the last row of each repeated key (in order), or None if keys are unique."""
    if len(keys) < 2:
        return None
    rows = keys.view(np.dtype((np.void, 8 * keys.shape[1]))).ravel() if keys.ndim == 2 else keys
    reversed_rows = rows[::-1]
    _, first_in_reversed = np.unique(reversed_rows, return_index=True)
    if len(first_in_reversed) == len(keys):
        return None
    return np.sort(len(keys) - 1 - first_in_reversed)
