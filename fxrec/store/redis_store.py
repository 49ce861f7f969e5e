"""RedisStore: the scale-out embedding store, one Redis string per key holding its fixed-size record.

Why this layout: the value of a key is the same fixed-size binary record the LMDB store uses
(`records.py`), so a batched get is a single MGET — one round trip, atomic on the server — whose
values join into one buffer and decode with one `np.frombuffer`. Key names are built from a NumPy
view (namespace prefix + raw int64 bytes), not formatted one by one. Most of a get's time is redis-py
parsing the reply element by element; installing `hiredis` (redis-py picks it up by itself) moves that
into C. (A Lua script returning all records as one bulk string measured 2-3x slower than MGET.)

A put is a read-merge-write: WATCH the namespace's write-epoch key, MGET the batch's records, apply
the version rule in NumPy, then MULTI / INCR epoch / MSET / EXEC. Every put bumps the epoch inside its
transaction, so if another writer committed in between, EXEC applies nothing and the put retries: no
lost versions. (Watching the batch's own keys instead costs O(n^2) in redis-server's WATCH: half a
second, with the server blocked, for 10k keys.) EXEC applies the whole batch at once, so readers see
all of a batch or none of it.

Availability: the serving layer must not hang on a dead Redis. Sockets have short timeouts, redis-py's
own retries are off, and any connection failure surfaces as `StoreUnavailable` within a few hundred
milliseconds; the connection pool reconnects by itself on the next call once Redis is back. TTL is
applied at read time from the entries' write times (which are log time, not Redis's clock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fxrec.store.base import StorageDtype, StoreOptions, StoreUnavailable
from fxrec.store.records import Merge, RecordStore

T = TypeVar("T")
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisStore(RecordStore):
    """Versioned embedding store in a Redis database.

    Example:
        >>> store = RedisStore("redis://127.0.0.1:6379/0", dim=64, namespace="user")
        >>> store.put(np.arange(3), np.zeros((3, 64)), version=1, ts=1_700_000_000)
        >>> store.get(np.arange(4)).found
        array([ True,  True,  True, False])
    """

    def __init__(
        self,
        url: str | None = None,
        dim: int | None = None,
        keep_versions: int = 3,
        dtype: StorageDtype = "float32",
        ttl_seconds: int | None = None,
        namespace: str = "default",
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        socket_timeout_s: float = 0.25,
        connect_timeout_s: float = 0.1,
        chunk_size: int = 20_000,
        max_put_attempts: int = 20,
    ):
        if dim is None:
            raise ValueError("dim is required: the embedding width this store holds")
        super().__init__(StoreOptions(dim=dim, keep_versions=keep_versions, dtype=dtype, ttl_seconds=ttl_seconds))
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty string, got {namespace!r}")
        self.namespace = namespace
        self.chunk_size = chunk_size
        self.max_put_attempts = max_put_attempts
        options = dict(
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),  # fail fast; the caller decides when to try again
            health_check_interval=0,
        )
        if url is not None:
            self.client = redis.Redis.from_url(url, **options)
        else:
            self.client = redis.Redis(host=host, port=port, db=db, **options)
        self.url = _display_url(self.client)
        prefix = f"fxrec:{namespace}:".encode()
        self._meta_key = prefix + b"meta"
        self._epoch_key = prefix + b"epoch"  # bumped by every put: the one key writers WATCH
        # 1-D keys and pairs live side by side under different prefixes of the same length.
        self._prefixes = {1: prefix + b"i:", 2: prefix + b"p:"}
        self._name_dtypes = {
            width: np.dtype([("prefix", f"S{len(self._prefixes[width])}"), ("key", "<i8", (width,))]) for width in (1, 2)
        }
        self._meta_record = self._metadata_json()
        self._meta_checked = False
        self._closed = False
        try:
            self._call(self._check_meta)
        except StoreUnavailable:
            pass  # checked on the first call that reaches Redis; serving may start while Redis is down

    def _call(self, operation: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError(f"Redis store {self.url} namespace {self.namespace!r} is closed")
        try:
            if not self._meta_checked:
                self._check_meta()
            return operation()
        except _UNAVAILABLE as error:
            raise StoreUnavailable(f"Redis at {self.url} is unreachable ({type(error).__name__}: {error})") from error

    def _check_meta(self) -> None:
        if self._meta_checked:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self._meta_key, self._meta_record, nx=True)
        pipe.get(self._meta_key)
        _, stored = pipe.execute()
        self._check_metadata_json(stored, f"Redis store {self.url} namespace {self.namespace!r}")
        self._meta_checked = True

    def _names(self, keys: np.ndarray) -> list[bytes]:
        """Redis key names (prefix + raw little-endian int64 bytes), built as one NumPy view."""
        width = keys.shape[1] if keys.ndim == 2 else 1
        names = np.empty(len(keys), dtype=self._name_dtypes[width])
        names["prefix"] = self._prefixes[width]
        names["key"] = keys.reshape(len(keys), width)
        return names.view(np.dtype((np.void, names.dtype.itemsize))).tolist()

    def _chunks(self, items: list[bytes]) -> list[list[bytes]]:
        return [items[start:start + self.chunk_size] for start in range(0, len(items), self.chunk_size)]

    def _read_chunks(self, names: list[bytes]) -> np.ndarray:
        """Records of `names` from one atomic snapshot: one MGET, or several inside MULTI/EXEC."""
        if not names:
            return self.codec.decode(b"", 0)
        if len(names) <= self.chunk_size:
            values = self.client.mget(names)
        else:
            pipe = self.client.pipeline(transaction=True)
            for chunk in self._chunks(names):
                pipe.mget(chunk)
            values = [value for chunk_values in pipe.execute() for value in chunk_values]
        empty = self.codec.empty
        return self.codec.decode(b"".join([value or empty for value in values]), len(names))

    def _read_records(self, keys: np.ndarray) -> np.ndarray:
        names = self._names(keys)
        return self._call(lambda: self._read_chunks(names))

    def _update_records(self, keys: np.ndarray, merge: Merge) -> None:
        names = self._names(keys)
        where = f"Redis store {self.url} namespace {self.namespace!r}"

        def update() -> None:
            with self.client.pipeline(transaction=True) as pipe:
                for _ in range(self.max_put_attempts):
                    try:
                        pipe.watch(self._epoch_key, self._meta_key)
                        # A Redis restart without persistence loses the metadata record too: check it on
                        # every put and write it back with the batch, so a mismatched store still errors.
                        stored_meta = pipe.get(self._meta_key)
                        if stored_meta is not None:
                            self._check_metadata_json(stored_meta, where)
                        # Read on the main client: anything committed after the WATCH fails our EXEC anyway.
                        new, changed = merge(self._read_chunks(names))
                        rows = np.flatnonzero(changed)
                        if len(rows) == 0:
                            pipe.unwatch()
                            return
                        values = self.codec.encode(new[rows])
                        changed_names = [names[i] for i in rows]
                        pipe.multi()
                        pipe.incr(self._epoch_key)
                        if stored_meta is None:
                            pipe.set(self._meta_key, self._meta_record)
                        for start in range(0, len(rows), self.chunk_size):
                            end = start + self.chunk_size
                            pipe.mset(dict(zip(changed_names[start:end], values[start:end], strict=True)))
                        pipe.execute()
                        return
                    except redis.WatchError:
                        continue  # another writer committed in between: nothing of ours was applied, redo
            raise RuntimeError(f"{where}: concurrent writers kept committing; gave up after {self.max_put_attempts} attempts")

        self._call(update)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, namespace={self.namespace!r}, dim={self.dim}, dtype={self.dtype!r})"


def _display_url(client: redis.Redis) -> str:
    """Where the client points, for messages; never the password a URL may carry."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"
