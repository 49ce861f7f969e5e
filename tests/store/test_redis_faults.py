"""Redis outages: fail fast with StoreUnavailable, then work again on the same store object."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from fxrec.store import RedisServer, RedisServerError, RedisStore, StoreUnavailable
from fxrec.store.redis_server import find_redis_server

DIM = 8


@pytest.fixture
def own_server():
    """A server these tests may stop and pause without disturbing the session one."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (set $FXREC_REDIS_SERVER or put it on PATH)")
    with RedisServer() as server:
        yield server


def elapsed_raising(call) -> float:
    started = time.perf_counter()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        call()
    return time.perf_counter() - started


def test_stopped_server_fails_fast_then_recovers(own_server):
    store = RedisStore(own_server.url, dim=DIM, namespace="users")
    keys = np.arange(10)
    store.put(keys, np.ones((10, DIM)), version=1, ts=0)
    own_server.stop()
    assert elapsed_raising(lambda: store.get(keys)) < 0.3
    assert elapsed_raising(lambda: store.get_stabilized(keys)) < 0.3
    assert elapsed_raising(lambda: store.put(keys, np.ones((10, DIM)), version=2, ts=0)) < 0.3
    own_server.start()  # same port; no persistence, so the data is gone but the store works again
    assert not store.get(keys).found.any()
    store.put(keys, np.full((10, DIM), 2.0), version=2, ts=0)
    read = store.get(keys)
    assert read.found.all() and (read.vectors == 2.0).all()
    store.close()


def test_hung_server_times_out_quickly(own_server):
    store = RedisStore(own_server.url, dim=DIM, namespace="users", socket_timeout_s=0.2)
    store.put(np.arange(3), np.ones((3, DIM)), version=1, ts=0)
    os.kill(own_server.pid, signal.SIGSTOP)
    try:
        assert elapsed_raising(lambda: store.get(np.arange(3))) < 0.5
    finally:
        os.kill(own_server.pid, signal.SIGCONT)
    assert store.get(np.arange(3)).found.all()  # the timed-out connection was dropped, not reused
    store.close()


def test_store_opened_while_redis_is_down(own_server):
    own_server.stop()
    store = RedisStore(own_server.url, dim=DIM, namespace="late")  # does not raise: serving may start first
    assert elapsed_raising(lambda: store.get(np.arange(3))) < 0.3
    own_server.start()
    store.put(np.arange(3), np.ones((3, DIM)), version=1, ts=0)
    assert store.get(np.arange(3)).found.all()
    store.close()


def test_metadata_survives_a_restart_through_puts(own_server):
    store = RedisStore(own_server.url, dim=DIM, namespace="users")
    own_server.stop()
    own_server.start()  # metadata gone with the data; the next put writes it back
    store.put(np.arange(2), np.ones((2, DIM)), version=1, ts=0)
    with pytest.raises(ValueError, match="dim=8"):
        RedisStore(own_server.url, dim=DIM * 2, namespace="users")
    store.close()


def test_missing_binary_is_a_clear_error():
    with pytest.raises(RedisServerError, match="redis-server not found.*FXREC_REDIS_SERVER"):
        RedisServer(binary="/nonexistent/redis-server")


def test_large_batches_are_chunked_atomically(redis_server):
    store = RedisStore(redis_server.url, dim=DIM, namespace="chunks", chunk_size=1000)
    keys = np.arange(4500)
    values = np.random.default_rng(0).standard_normal((4500, DIM)).astype(np.float32)
    store.put(keys, values, version=1, ts=0)
    read = store.get(keys[::-1])
    assert read.found.all()
    np.testing.assert_array_equal(read.vectors, values[::-1])
    store.close()
