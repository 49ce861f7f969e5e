"""`fxrec refresh-worker`: a separate process that runs the FM for the Redis refresh stream.

It loads what the embedded server's refresh thread uses -- the catalog, the FM, the stores -- and
hands the same `Refresher` to `streams.run_worker`. Run as many as the FM's load needs; the
consumer group spreads the stream over them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from fxrec.data.eventlog import EventLog
from fxrec.pipeline import events_path
from fxrec.serving.catalog import FeatureCatalog
from fxrec.serving.guard import GuardedStore
from fxrec.serving.metrics import ServingMetrics
from fxrec.serving.models import RunError, load, run_config
from fxrec.serving.precompute import PairPredictor
from fxrec.serving.refresher import Refresher, RefreshTargets, has_target_attention, has_user_tower
from fxrec.serving.service import AGGREGATE_NAMESPACE, PAIR_NAMESPACE, USER_NAMESPACE, ServingConfig
from fxrec.serving.streams import SyncedClock, run_worker

log = logging.getLogger(__name__)


def build_worker_refresher(
    run: Path,
    store: str,
    cache: str,
    fm_name: str | None = None,
    pairs: bool = True,
    config: ServingConfig | None = None,
) -> tuple[Refresher, SyncedClock, list[GuardedStore]]:
    from fxrec.store import open_store

    config = config or ServingConfig()
    settings = run_config(run)
    catalog = FeatureCatalog.from_log(EventLog(events_path(settings, run)))
    fm = load(run, fm_name or settings.fm.name)
    clock = SyncedClock(catalog.last_ts + 1)
    metrics = ServingMetrics()
    opened: list[GuardedStore] = []

    def guard(uri: str, name: str, dim: int, **kw) -> GuardedStore:
        opened.append(
            GuardedStore(
                open_store(uri, dim=dim, **kw),
                name,
                probe_every=config.probe_every,
                clock=clock,
                local_copy=0,
            )
        )
        return opened[-1]

    targets = RefreshTargets()
    if has_user_tower(fm):
        targets.user_store = guard(store, "user", int(fm.model.user_tower.dim), namespace=USER_NAMESPACE)
    if pairs and has_target_attention(fm):
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
            f"FM {fm.name!r} has neither a user tower nor target attention: a refresh worker has nothing to compute"
        )
    refresher = Refresher(
        fm,
        catalog,
        targets,
        PairPredictor(catalog, config.max_pairs_per_user),
        metrics,
        clock,
        config.pair_budget,
    )
    return refresher, clock, opened


def start_worker(
    run: Path,
    store: str,
    cache: str,
    queue_url: str,
    fm_name: str | None = None,
    pairs: bool = True,
    batch: int = 32,
    seconds: float | None = None,
    threads: int = 1,
) -> int:
    if not queue_url.startswith("redis://"):
        raise RunError(f"the refresh stream lives in Redis; got queue URL {queue_url!r}")
    torch.set_num_threads(threads)
    refresher, clock, stores = build_worker_refresher(run, store, cache, fm_name, pairs)
    try:
        return run_worker(queue_url, refresher, clock, batch_size=batch, stop_after=seconds)
    except KeyboardInterrupt:
        return 0
    finally:
        for opened in stores:
            opened.close()
