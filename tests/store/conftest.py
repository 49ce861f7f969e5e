"""Store fixtures: one real redis-server per session, and a factory for fresh stores of each backend."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from fxrec.store import EmbeddingStore, LMDBStore, MemoryStore, RedisServer, RedisStore
from fxrec.store.redis_server import find_redis_server

BACKENDS = ["lmdb", "redis", "memory"]
MakeStore = Callable[..., EmbeddingStore]


def require_redis_server() -> None:
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (set $FXREC_REDIS_SERVER or put it on PATH)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(request: pytest.FixtureRequest, backend: str, tmp_path) -> Iterator[MakeStore]:
    """make_store(**options) -> a store of `backend` in a fresh namespace; make_store(namespace=...) reopens one."""
    opened: list[EmbeddingStore] = []
    default_namespace = f"test-{uuid.uuid4().hex[:8]}"
    server = request.getfixturevalue("redis_server") if backend == "redis" else None

    def make(**options: object) -> EmbeddingStore:
        options.setdefault("namespace", default_namespace)
        if backend == "lmdb":
            store: EmbeddingStore = LMDBStore(tmp_path / "lmdb", **options)
        elif backend == "redis":
            store = RedisStore(server.url, **options)
        else:
            store = MemoryStore(**options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
