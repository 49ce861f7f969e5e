"""Atomic batch writes: a reader racing a writer sees every batch whole or not at all, never a torn vector."""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest

from fxrec.store import LMDBStore, RedisStore

DIM = 32
KEYS = np.arange(300, dtype=np.int64)
BATCHES = 40


def write_batches(store, batches: int = BATCHES) -> None:
    """Batch b writes every key with a vector whose every element is b, as version b."""
    for batch in range(1, batches + 1):
        store.put(KEYS, np.full((len(KEYS), DIM), batch, dtype=np.float32), version=batch, ts=batch)


def torn_reads(store, stop: threading.Event | None, rounds: int | None = None) -> tuple[list[str], int]:
    """Hammer get/get_history; return what was torn (if anything) and how many reads were checked."""
    problems: list[str] = []
    reads = 0
    while (stop is None or not stop.is_set()) and (rounds is None or reads < rounds):
        read = store.get(KEYS)
        reads += 1
        if not read.found.any():
            continue
        if not read.found.all():
            problems.append(f"read {reads}: {read.found.sum()} of {len(KEYS)} keys found")
        values = read.vectors[read.found]
        if (values.min(axis=1) != values.max(axis=1)).any():
            problems.append(f"read {reads}: a vector with mixed values")
        if len(np.unique(values[:, 0])) != 1 or (read.version[read.found] != values[:, 0]).any():
            problems.append(f"read {reads}: batches {np.unique(values[:, 0]).tolist()} mixed in one read")
        _, versions, _ = store.get_history(KEYS)
        if (versions != versions[0]).any():
            problems.append(f"read {reads}: histories differ across keys of one batch")
    return problems, reads


def test_reader_never_sees_a_partial_batch(make_store):
    store = make_store(dim=DIM)
    stop = threading.Event()
    result: dict[str, tuple[list[str], int]] = {}
    reader = threading.Thread(target=lambda: result.setdefault("reader", torn_reads(store, stop)))
    reader.start()
    try:
        write_batches(store)
    finally:
        stop.set()
        reader.join(timeout=30)
    problems, reads = result["reader"]
    assert reads > 0
    assert not problems, problems[:5]
    final = store.get(KEYS)
    assert final.found.all() and (final.vectors == BATCHES).all()


def _reader_process(path: str, namespace: str, rounds: int, queue: multiprocessing.Queue) -> None:
    store = LMDBStore(path, dim=DIM, namespace=namespace)
    try:
        queue.put(torn_reads(store, None, rounds=rounds))
    finally:
        store.close()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork to start a reader cheaply")
def test_lmdb_reader_in_another_process(tmp_path):
    """A separate process opens the same folder and reads while this one writes (MVCC snapshots)."""
    path = str(tmp_path / "shared")
    LMDBStore(path, dim=DIM, namespace="users").close()  # create it; no environment open across the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_reader_process, args=(path, "users", 150, queue))
    process.start()
    store = LMDBStore(path, dim=DIM, namespace="users")
    try:
        write_batches(store)
        problems, reads = queue.get(timeout=60)
    finally:
        process.join(timeout=60)
        store.close()
    assert process.exitcode == 0
    assert reads == 150
    assert not problems, problems[:5]


def test_lmdb_namespaces_share_one_environment(tmp_path):
    users = LMDBStore(tmp_path / "env", dim=4, namespace="user")
    pairs = LMDBStore(tmp_path / "env", dim=16, dtype="float16", namespace="solaris_pairs")
    users.put(np.array([1]), np.ones((1, 4)), version=1, ts=0)
    pairs.put(np.array([[1, 2]]), np.ones((1, 16)), version=1, ts=0)
    users.close()  # closing one store leaves the shared environment open for the other
    assert pairs.get(np.array([[1, 2]])).found[0]
    pairs.close()
    with pytest.raises(RuntimeError, match="closed"):
        pairs.get(np.array([[1, 2]]))
    reopened = LMDBStore(tmp_path / "env", dim=4, namespace="user")
    assert reopened.get(np.array([1])).found[0]
    reopened.close()


def test_lmdb_map_grows_when_full_while_readers_run(tmp_path):
    store = LMDBStore(tmp_path / "small", dim=64, map_size=1 << 20)
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                store.get(np.arange(0, 20_000, 7))
            except BaseException as error:  # noqa: BLE001 - any failure in the reader fails the test
                errors.append(error)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for start in range(0, 20_000, 2_000):  # ~17 MB of records into a 1 MiB map: several resizes
            store.put(np.arange(start, start + 2_000), np.ones((2_000, 64)), version=1, ts=0)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not errors, errors
    assert store.get(np.arange(20_000)).found.all()
    store.close()


def test_concurrent_writers_lose_no_versions(make_store, backend):
    """Two writers (separate store objects / connections) race on the same keys with interleaved versions:
    a read-merge-write that lost an update would leave an older newest version or a non-decreasing history."""
    first = make_store(dim=DIM, keep_versions=3, namespace="race")
    stores = [first, first if backend == "memory" else make_store(dim=DIM, keep_versions=3, namespace="race")]
    keys = np.arange(500)

    def write(store, versions: range) -> None:
        for version in versions:
            store.put(keys, np.full((len(keys), DIM), version, dtype=np.float32), version=version, ts=version)

    threads = [threading.Thread(target=write, args=(stores[0], range(1, 60, 2))),
               threading.Thread(target=write, args=(stores[1], range(2, 61, 2)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    read = stores[0].get(keys)
    np.testing.assert_array_equal(read.version, np.full(len(keys), 60))
    history, versions, counts = stores[1].get_history(keys)
    assert (counts == 3).all() and (np.diff(versions, axis=1) < 0).all()
    np.testing.assert_array_equal(history[:, :, 0], versions.astype(np.float32))


def test_redis_put_retries_when_another_writer_commits_mid_put(redis_server):
    """Force the race: writer B commits between writer A's read and A's write. A must notice (its EXEC
    fails), re-read and push on top of B's version, not overwrite it from its stale read."""
    a = RedisStore(redis_server.url, dim=DIM, keep_versions=3, namespace="forced-race")
    b = RedisStore(redis_server.url, dim=DIM, keep_versions=3, namespace="forced-race")
    keys = np.arange(10)
    a.put(keys, np.full((10, DIM), 1.0), version=1, ts=1)
    merger = a.codec.merger
    interfered: list[bool] = []

    def merger_with_interference(vectors, version, ts):
        merge = merger(vectors, version, ts)

        def racing_merge(old):
            if not interfered:
                interfered.append(True)
                b.put(keys, np.full((10, DIM), 2.0), version=2, ts=2)
            return merge(old)

        return racing_merge

    a.codec.merger = merger_with_interference
    a.put(keys, np.full((10, DIM), 3.0), version=3, ts=3)
    history, versions, _ = a.get_history(keys)
    np.testing.assert_array_equal(versions, np.tile([3, 2, 1], (10, 1)))
    np.testing.assert_array_equal(history[:, :, 0], np.tile([3.0, 2.0, 1.0], (10, 1)))
    a.close()
    b.close()
