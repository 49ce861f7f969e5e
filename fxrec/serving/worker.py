"""FM refresh outside the server's interpreter: `fxrec refresh-worker` processes (Redis Stream) and
the embedded server's refresh child processes.

Both build the same `Refresher` the in-thread path uses -- the catalog, the FM, the stores -- in
their own process, so the FM's Python work never contends with the request path for the GIL. With
Redis, `streams.run_worker` feeds it from the stream (run as many workers as the FM's load needs; the
consumer group spreads the stream over them); embedded, the server's asyncio queue hands batches to a
`ProcessPoolExecutor` whose children were set up by `init_child`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from fxrec.run import Run, RunError
from fxrec.serving.catalog import FeatureCatalog
from fxrec.serving.guard import GuardedStore
from fxrec.serving.precompute import PairPredictor
from fxrec.serving.refresher import Refresher, RefreshTargets, has_target_attention, has_user_tower
from fxrec.serving.service import AGGREGATE_NAMESPACE, PAIR_NAMESPACE, USER_NAMESPACE, ServingConfig
from fxrec.serving.soap import RefreshJob
from fxrec.serving.streams import SyncedClock, run_worker

log = logging.getLogger(__name__)


def build_refresher(
    run: Path,
    store: str | None,
    cache: str | None,
    fm_name: str | None = None,
    config: ServingConfig | None = None,
    catalog: FeatureCatalog | None = None,
) -> tuple[Refresher, SyncedClock, list[GuardedStore]]:
    """A Refresher writing user embeddings to `store` and pair embeddings to `cache` (None: skip)."""
    from fxrec.store import open_store

    run_dir = Run(run)
    config = config or ServingConfig()
    catalog = catalog or FeatureCatalog.from_log(run_dir.event_log())
    fm = run_dir.load_model(fm_name or run_dir.config.fm.name)
    clock = SyncedClock(catalog.last_ts + 1)
    opened: list[GuardedStore] = []

    def guard(uri: str, name: str, dim: int, **kw) -> GuardedStore:
        store_ = open_store(uri, dim=dim, **kw)
        opened.append(GuardedStore(store_, name, probe_every=config.probe_every, clock=clock, local_copy=0))
        return opened[-1]

    targets = RefreshTargets()
    if store is not None and has_user_tower(fm):
        targets.user_store = guard(store, "user", int(fm.model.user_tower.dim), namespace=USER_NAMESPACE)
    if cache is not None and has_target_attention(fm):
        dim = int(fm.model.target_attention.out.out_features)
        ttl = config.pair_ttl_seconds
        targets.pair_store = guard(
            cache, "pairs", dim, namespace=PAIR_NAMESPACE, ttl_seconds=ttl, keep_versions=1
        )
        targets.aggregate_store = guard(
            cache, "aggregates", dim, namespace=AGGREGATE_NAMESPACE, ttl_seconds=ttl, keep_versions=1
        )
    if targets.user_store is None and targets.pair_store is None:
        raise RunError(
            f"FM {fm.name!r} has neither a user tower nor target attention: there is nothing to refresh"
        )
    predictor = PairPredictor(catalog, config.max_pairs_per_user)
    return Refresher(fm, catalog, targets, predictor, clock, config.pair_budget), clock, opened


def start_worker(
    run: Path,
    store: str,
    cache: str | None,
    queue_url: str,
    fm_name: str | None = None,
    batch: int = 32,
    seconds: float | None = None,
    threads: int = 1,
) -> int:
    """`fxrec refresh-worker`: consume the Redis refresh stream until interrupted."""
    if not queue_url.startswith("redis://"):
        raise RunError(f"the refresh stream lives in Redis; got queue URL {queue_url!r}")
    torch.set_num_threads(threads)
    refresher, clock, stores = build_refresher(run, store, cache, fm_name)
    try:
        return run_worker(queue_url, refresher, clock, batch_size=batch, stop_after=seconds)
    except KeyboardInterrupt:
        return 0
    finally:
        for opened in stores:
            opened.close()


# -- the embedded server's refresh children ----------------------------------------------------------
_CHILD: tuple[Refresher, SyncedClock] | None = None


def init_child(run: str, store: str | None, cache: str | None, fm_name: str, config: dict, nice: int) -> None:
    """ProcessPoolExecutor initializer: lower this process's priority and build its Refresher."""
    global _CHILD
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    torch.set_num_threads(1)
    refresher, clock, _ = build_refresher(Path(run), store, cache, fm_name, ServingConfig(**config))
    _CHILD = (refresher, clock)


def run_in_child(jobs: list[RefreshJob], event_ts: float) -> dict[str, int]:
    assert _CHILD is not None, "init_child did not run in this process"
    refresher, clock = _CHILD
    clock.observe(event_ts)
    return refresher.run(jobs)


def child_ready() -> bool:
    return _CHILD is not None
