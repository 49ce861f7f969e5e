"""Embedding store reads and writes: LMDB and Redis against a NumPy in-memory gather, in one run.

Serving reads FM user embeddings for every request batch, so the store's batched get is on the
latency path. The ceiling is a NumPy gather from an in-memory (n, d) array by row index; a real
in-memory store also has to map arbitrary int64 ids to rows, so a searchsorted + gather row is shown
too. Issue 5's goal: LMDB gets at >= 25% of the gather's keys/s.

Each backend is timed in interleaved rounds (numpy, lmdb, redis, numpy, ...) on the same random key
batches and the median round is reported, so load from other jobs on the machine hits all of them
alike. "LMDB plain" is the straightforward per-key read (txn.get + np.frombuffer + decode per key)
that the bulk path replaces: the before/after of the read-path work.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import parse_args, print_table, write_result

from fxrec.store import LMDBStore, RedisServer, RedisServerError, RedisStore
from fxrec.store.base import EmbeddingStore
from fxrec.store.records import RecordStore, dequantize

PUT_BATCH = 10_000


def plain_lmdb_get(store: LMDBStore, keys: np.ndarray) -> np.ndarray:
    """The per-key read path (before): one txn.get, one frombuffer and one decode per key."""
    out = np.zeros((len(keys), store.dim), dtype=np.float32)
    with store._shared.env.begin(db=store._ids) as txn:
        for i, key in enumerate(keys.tolist()):
            value = txn.get(int(key).to_bytes(8, "little", signed=True))
            if value is not None:
                record = np.frombuffer(value, dtype=store.codec.dtype)[0]
                if record["version"][0] >= 0:
                    out[i] = dequantize(record["vector"][0], record["scale"][0])
    return out


def load(store: EmbeddingStore, ids: np.ndarray, vectors: np.ndarray, version: int) -> float:
    """Put every id in batches of PUT_BATCH; return keys/s."""
    started = time.perf_counter()
    for start in range(0, len(ids), PUT_BATCH):
        store.put(ids[start:start + PUT_BATCH], vectors[start:start + PUT_BATCH], version=version, ts=1_700_000_000 + version)
    return len(ids) / (time.perf_counter() - started)


def main() -> None:
    args = parse_args("store", __doc__, extra=[
        (("--keys",), dict(type=int, default=None, help="keys in the store (default 1M; 100k with --quick)")),
        (("--dim",), dict(type=int, default=64)),
        (("--batch",), dict(type=int, default=1024, help="keys per get")),
        (("--rounds",), dict(type=int, default=7, help="interleaved timing rounds; the median is reported")),
    ])
    n = args.keys or (100_000 if args.quick else 1_000_000)
    batches_per_round = 40 if args.quick else 100
    rng = np.random.default_rng(0)
    ids = np.arange(n, dtype=np.int64) * 7919 + 12345  # sparse user ids, sorted
    table = rng.standard_normal((n, args.dim), dtype=np.float32)
    updated = table + np.float32(0.01)
    rows = rng.integers(0, n, (batches_per_round, args.batch))
    key_batches = ids[rows]
    folder = Path(tempfile.mkdtemp(prefix="fxrec-bench-store-"))
    server: RedisServer | None = None
    stores: dict[str, RecordStore] = {}
    puts: list[dict] = []
    try:
        stores["lmdb"] = LMDBStore(folder / "lmdb", dim=args.dim, namespace="user")
        if not args.quick:
            stores["lmdb_fp16"] = LMDBStore(folder / "lmdb", dim=args.dim, dtype="float16", namespace="user16")
        try:
            server = RedisServer()
            stores["redis"] = RedisStore(server.url, dim=args.dim, namespace="user", socket_timeout_s=5.0)
        except RedisServerError as error:
            print(f"redis skipped: {error}")
        for name, store in stores.items():
            print(f"loading {n:,} keys into {name} ...", flush=True)
            first = load(store, ids, table, version=1)
            second = load(store, ids, updated, version=2)  # read-merge-write over existing records
            record_bytes = store.codec.size
            puts.append({"backend": name, "record_bytes": record_bytes, "put_new_keys_per_s": first, "put_update_keys_per_s": second})
            for start in range(0, n, 8192):  # touch every record once: measure the steady state, not first page faults
                store.get(ids[start:start + 8192])

        readers: dict[str, Callable[[int], object]] = {
            "numpy gather (row index)": lambda b: updated[rows[b]],
            "numpy searchsorted + gather (int64 ids)": lambda b: updated[np.searchsorted(ids, key_batches[b])],
        }
        for name, store in stores.items():
            readers[f"{name} get"] = lambda b, s=store: s.get(key_batches[b])
            readers[f"{name} get_stabilized"] = lambda b, s=store: s.get_stabilized(key_batches[b])
        readers["lmdb plain per-key get (before)"] = lambda b: plain_lmdb_get(stores["lmdb"], key_batches[b])

        check = stores["lmdb"].get(key_batches[0])
        assert check.found.all() and np.array_equal(check.vectors, updated[rows[0]]), "LMDB read back wrong vectors"
        assert np.array_equal(plain_lmdb_get(stores["lmdb"], key_batches[0]), updated[rows[0]])

        timings: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(args.rounds):
            for name, read in readers.items():
                started = time.perf_counter()
                for b in range(batches_per_round):
                    read(b)
                timings[name].append(batches_per_round * args.batch / (time.perf_counter() - started))
        ceiling = statistics.median(timings["numpy gather (row index)"])
        table_rows = []
        for name, samples in timings.items():
            keys_per_s = statistics.median(samples)
            table_rows.append({
                "read": name,
                "keys_per_s": keys_per_s,
                "us_per_batch": args.batch / keys_per_s * 1e6,
                "over_numpy_gather": keys_per_s / ceiling,
                "spread": (max(samples) - min(samples)) / keys_per_s,
            })
        print_table(f"batched gets: {n:,} keys, d={args.dim}, batches of {args.batch} random keys (median of {args.rounds} rounds)", table_rows)
        print_table(f"puts: batches of {PUT_BATCH:,} keys (new keys, then a newer version of each)", puts)
        by_name = {row["read"]: row["keys_per_s"] for row in table_rows}
        ratios = {
            "lmdb_get_over_numpy_gather": by_name["lmdb get"] / ceiling,
            "lmdb_get_over_searchsorted_gather": by_name["lmdb get"] / by_name["numpy searchsorted + gather (int64 ids)"],
            "lmdb_get_over_plain_per_key": by_name["lmdb get"] / by_name["lmdb plain per-key get (before)"],
            "goal_lmdb_over_numpy_gather": 0.25,
            "goal_met": by_name["lmdb get"] / ceiling >= 0.25,
        }
        if "redis get" in by_name:
            ratios["redis_get_over_numpy_gather"] = by_name["redis get"] / ceiling
            ratios["lmdb_get_over_redis_get"] = by_name["lmdb get"] / by_name["redis get"]
        for name, value in ratios.items():
            print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")
        write_result(
            args, "store", table_rows, ratios, puts=puts, keys=n, dim=args.dim, batch=args.batch,
            load_average=os.getloadavg(),
        )
    finally:
        for store in stores.values():
            store.close()
        if server is not None:
            server.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
