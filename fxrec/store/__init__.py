"""Versioned embedding stores: FM outputs (SUM user embeddings, SOLARIS pair embeddings) for VMs and serving.

Open one by URI, so configs and the CLI never name a backend class::

    store = open_store("lmdb:///runs/demo/store", dim=64, namespace="user")   # embedded default
    store = open_store("redis://127.0.0.1:6379/0", dim=64, namespace="user")  # scale-out
    store = open_store("memory://", dim=64)                                   # reference, in-process

Adding a backend is one new file plus one line in `_BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fxrec.store.base import (
    EmbeddingStore,
    StoreMetadataError,
    StoreOptions,
    StoreRead,
    StoreUnavailable,
)
from fxrec.store.lmdb_store import LMDBStore
from fxrec.store.redis_server import RedisServer, RedisServerError
from fxrec.store.redis_store import RedisStore
from fxrec.store.reference import MemoryStore
from fxrec.store.stabilize import Drift, VersionDrift, drift, version_drift


def _open_lmdb(uri: str, **kw: Any) -> EmbeddingStore:
    path = uri.removeprefix("lmdb://")  # lmdb:///abs/dir -> /abs/dir; lmdb://rel/dir -> rel/dir
    if not path:
        raise ValueError(f"{uri!r}: an LMDB store URI needs a folder, e.g. lmdb:///path/to/dir")
    return LMDBStore(path, **kw)


def _open_memory(uri: str, **kw: Any) -> EmbeddingStore:
    return MemoryStore(**kw)


_BACKENDS: dict[str, Callable[..., EmbeddingStore]] = {
    "lmdb": _open_lmdb,
    "redis": RedisStore,
    "rediss": RedisStore,
    "memory": _open_memory,
}


def open_store(uri: str, **kw: Any) -> EmbeddingStore:
    """Open the store a URI names: lmdb:///path/to/dir, redis://host:port/db or memory://.

    Keyword arguments go to the backend: dim (required), keep_versions, dtype, ttl_seconds, namespace, ...
    """
    scheme, sep, _ = uri.partition("://")
    if not sep or scheme not in _BACKENDS:
        raise ValueError(f"unknown store URI {uri!r}; expected one of lmdb:///path/to/dir, redis://host:port/db, memory://")
    return _BACKENDS[scheme](uri, **kw)


__all__ = [
    "Drift",
    "EmbeddingStore",
    "LMDBStore",
    "MemoryStore",
    "RedisServer",
    "RedisServerError",
    "RedisStore",
    "StoreMetadataError",
    "StoreOptions",
    "StoreRead",
    "StoreUnavailable",
    "VersionDrift",
    "drift",
    "open_store",
    "version_drift",
]
