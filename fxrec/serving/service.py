"""One scoring service for one VM of a run: everything `fxrec serve` starts, wired together.

    request -> Scorer (validate, store reads, VM)           [scoring thread]
            -> RefreshQueue.offer(user, candidates)         [event loop, never blocks]
    RefreshWorkers -> Refresher.run (FM -> stores)           [background thread, lower priority]
    SimilarUsersIndexer                                      [background thread]

Configurations (`ServingConfig.mode`), compared side by side by `fxrec loadtest`:
  vm      the VM with whatever the stores hold; no FM work anywhere        (a)
  async   + SOAP refresh and SOLARIS precompute in the background          (b)
  inline  the FM runs on the request path for the request's rows           (c)
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fxrec.run import LoadedModel, Run, RunError
from fxrec.serving.catalog import FeatureCatalog
from fxrec.serving.guard import GuardedStore
from fxrec.serving.loopfm import LoopFMLog
from fxrec.serving.metrics import ServingMetrics
from fxrec.serving.models import check_servable
from fxrec.serving.precompute import PairPredictor, PairReader, SimilarUsers, SimilarUsersIndexer
from fxrec.serving.refresher import Refresher, RefreshTargets, has_target_attention, has_user_tower
from fxrec.serving.schemas import ScoreRequest
from fxrec.serving.scorer import Mode, Scorer
from fxrec.serving.soap import Execute, RefreshJob, RefreshQueue, RefreshWorkers
from fxrec.serving.sources import StoreSources
from fxrec.serving.validation import RequestAssembler, RequestError
from fxrec.serving.windows import ServedWindows
from fxrec.transfer.serving import Needs

log = logging.getLogger(__name__)
USER_NAMESPACE, PAIR_NAMESPACE, AGGREGATE_NAMESPACE = "user", "tae_pair", "tae_user"


class ServingConfig(BaseModel):
    """How `fxrec serve` runs; every field is a CLI option of the same name."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = "async"
    store: str | None = None  # user-embedding (SUM) store URI; default: the run's published store
    cache: str | None = None  # SOLARIS pair cache + aggregates URI; default: lmdb://<run>/serving/solaris
    queue: Literal["local", "redis"] = "local"  # redis: a Redis Stream consumed by `fxrec refresh-worker`
    queue_url: str | None = None  # default: the store URI when it is redis://
    refresh_in: Literal["process", "thread"] = "process"  # embedded queue: FM in child processes or a thread
    fresh_seconds: float = Field(default=3600.0, gt=0)
    pair_ttl_seconds: int = Field(default=4 * 3600, ge=1)
    refresh_capacity: int = Field(default=1024, ge=1)
    refresh_batch: int = Field(default=32, ge=1)
    refresh_workers: int = Field(default=1, ge=1)
    refresh_interval: float = Field(default=1.0, ge=0)
    pair_budget: int = Field(default=512, ge=1)
    max_pairs_per_user: int = Field(default=256, ge=1)
    precompute_pairs: bool | None = None  # default: when the VM reads TAE and the FM computes it
    similar_users_k: int = Field(default=10, ge=1)
    similar_users_every: float = Field(default=30.0, gt=0)
    threads: int = Field(default=1, ge=1)  # torch threads per forward; requests are scored one at a time
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    probe_every: float = Field(default=0.25, gt=0)
    background_nice: int = Field(default=10, ge=0, le=19)  # how much lower the FM threads' CPU priority is
    funnel: bool = False  # also serve POST /v1/funnel: retrieval -> ESR -> this VM (after `fxrec funnel`)


class EventClock:
    """Serving time continues the log: it starts just after the log's last event and runs at wall speed.

    Histories, ages and the stores' write times all come from the log's timeline, so a model sees
    the same kind of ages it trained on, and a published embedding reads as hours old, not years.
    """

    def __init__(self, start_ts: int):
        self.start_ts = start_ts
        self._started = time.monotonic()

    def __call__(self) -> float:
        return self.start_ts + (time.monotonic() - self._started)


def _lower_priority(nice: int) -> None:
    """Runs in each background thread: Linux applies nice values per thread, so the FM yields the CPU
    to the request path whenever both want it -- the point of taking the FM off that path."""
    if nice and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            log.debug("could not lower the background thread's priority", exc_info=True)


class Service:
    def __init__(
        self, run: Path, vm: str, config: ServingConfig | None = None, catalog: FeatureCatalog | None = None
    ):
        self.run = Run(run)
        self.config = config = config or ServingConfig()
        torch.set_num_threads(config.threads)
        self.metrics = ServingMetrics()
        self.store_uris: dict[str, str] = {}
        run_settings = self.run.config
        self.catalog = catalog or FeatureCatalog.from_log(self.run.event_log())
        self.clock = EventClock(self.catalog.last_ts + 1)
        self.vm = self.run.load_model(vm)
        if self.vm.config.role != "vm":
            raise RunError(f"{vm!r} is a foundation model; serve an expert model (VM) of the run")
        check_servable(self.vm)
        self.windows = ServedWindows.load(self.run, self.vm)  # a request's window_s (window heads only)
        # What the VM's channels read at serving: the service opens those sources and no others.
        self.needs = Needs()
        for channel in getattr(self.vm.model, "channels", []):
            self.needs = self.needs | channel.serving_needs()
        loopfm = self._loopfm_log() if self.needs.loopfm_log else None
        self.fm_name = getattr(self.vm.config, "fm", None) or run_settings.fm.name
        needs_fm = config.mode != "vm"  # the VM-only configuration never runs the FM
        self.fm: LoadedModel | None = self.run.load_model(self.fm_name) if needs_fm else None
        self.fm_version = (
            self.fm.version if self.fm is not None else self.run.model(self.fm_name).trained_through()
        )

        self.user_store = self._user_store()
        self.pair_store, self.aggregate_store = self._pair_stores()
        self.similar = (
            SimilarUsers(config.similar_users_k)
            if self.pair_store is not None and self.user_store is not None
            else None
        )
        pair_reader = (
            PairReader(self.pair_store, self.aggregate_store, self.similar)
            if self.pair_store is not None and self.aggregate_store is not None
            else None
        )
        if self.needs.pair_embeddings and pair_reader is None:
            raise RunError(
                f"VM {vm!r} reads target-aware embeddings (tae) but the FM {self.fm_name!r} computes none"
            )
        surfaces = self.vm.config.surfaces or self.catalog.spec.surfaces
        self.assembler = RequestAssembler(self.catalog, self.vm.model.features, surfaces, self.clock)
        self.sources = StoreSources(
            self.metrics,
            self.user_store,
            pair_reader,
            loopfm,
            fm_version=self.fm.version_int if self.fm is not None else None,
            fresh_seconds=config.fresh_seconds,
        )
        self.scorer = Scorer(
            self.vm,
            self.fm,
            self.assembler,
            self.metrics,
            config.mode,
            self.sources,
            fm_version=self.fm_version,
            windows=self.windows,
        )
        self.predictor = PairPredictor(self.catalog, config.max_pairs_per_user)
        self.refresher = self._refresher()
        self._score_pool = ThreadPoolExecutor(1, thread_name_prefix="score")
        self._refresh_pool = ThreadPoolExecutor(
            config.refresh_workers,
            thread_name_prefix="refresh",
            initializer=_lower_priority,
            initargs=(config.background_nice,),
        )
        self._process_pool: ProcessPoolExecutor | None = None
        self.queue: RefreshQueue | None = None
        self.workers: RefreshWorkers | None = None
        self.stream = None  # a RedisRefreshStream when config.queue == "redis"
        self.indexer: SimilarUsersIndexer | None = None
        self.funnel = None  # a FunnelService (fxrec.serving.funnel) when config.funnel
        if config.funnel:
            from fxrec.serving.funnel import FunnelService

            self.funnel = FunnelService(self)

    # -- construction helpers -------------------------------------------------------------------
    def _guard(self, uri: str, name: str, dim: int, local_copy: int = 50_000, **kw) -> GuardedStore:
        from fxrec.store import open_store

        store = open_store(uri, dim=dim, **kw)
        self.store_uris[name] = uri
        self.metrics.store_state(name, True)
        return GuardedStore(
            store,
            name,
            probe_every=self.config.probe_every,
            on_state=self.metrics.store_state,
            clock=self.clock,
            local_copy=local_copy,
        )

    def _user_dim(self) -> int | None:
        if self.fm is not None and has_user_tower(self.fm):
            return int(self.fm.model.user_tower.dim)
        return self.needs.user_embeddings or None

    def _loopfm_log(self) -> LoopFMLog:
        directory = self.run.publish_dir(self.vm.config.fm, self.vm.config.fm_delay)
        return LoopFMLog.from_publish(directory, keep=max(200, self.needs.loopfm_log))

    def _user_store(self) -> GuardedStore | None:
        dim = self._user_dim()
        if dim is None:
            return None
        published = self.run.user_store(self.fm_name)
        uri = self.config.store or f"lmdb://{published if published.exists() else self.run.serving_store}"
        return self._guard(uri, "user", dim, namespace=USER_NAMESPACE)

    def _pair_stores(self) -> tuple[GuardedStore | None, GuardedStore | None]:
        computes = self.fm is not None and has_target_attention(self.fm)
        reads = bool(self.needs.pair_embeddings)
        wanted = self.config.precompute_pairs if self.config.precompute_pairs is not None else reads
        if not (wanted and (computes or reads)):
            return None, None
        dim = self.needs.pair_embeddings or (
            int(self.fm.model.target_attention.out.out_features) if self.fm is not None else None
        )
        if dim is None:
            return None, None
        uri = self.config.cache or f"lmdb://{self.run.solaris_cache}"
        pairs = self._guard(
            uri,
            "pairs",
            dim,
            local_copy=0,  # a local copy of hundreds of pairs per request costs more than it saves
            namespace=PAIR_NAMESPACE,
            ttl_seconds=self.config.pair_ttl_seconds,
            keep_versions=1,
        )
        aggregates = self._guard(
            uri,
            "aggregates",
            dim,
            namespace=AGGREGATE_NAMESPACE,
            ttl_seconds=self.config.pair_ttl_seconds,
            keep_versions=1,
        )
        return pairs, aggregates

    def _refresher(self) -> Refresher | None:
        if self.config.mode != "async" or self.fm is None:
            return None
        user_store = self.user_store if has_user_tower(self.fm) else None
        pair_store = self.pair_store if has_target_attention(self.fm) else None
        if user_store is None and pair_store is None:
            log.warning(
                "FM %r has neither a user tower nor target attention: nothing to refresh", self.fm_name
            )
            return None
        targets = RefreshTargets(
            user_store, pair_store, self.aggregate_store if pair_store is not None else None
        )
        return Refresher(self.fm, self.catalog, targets, self.predictor, self.clock, self.config.pair_budget)

    # -- lifecycle (on the server's event loop) -------------------------------------------------
    async def start(self) -> None:
        if self.refresher is not None:
            if self.config.queue == "redis":
                from fxrec.serving.streams import RedisRefreshStream

                self.stream = RedisRefreshStream(
                    self._queue_url(),
                    self.metrics,
                    capacity=self.config.refresh_capacity,
                    min_interval=self.config.refresh_interval,
                    event_clock=self.clock,
                )
                self.stream.start()
            else:
                self.queue = RefreshQueue(
                    self.metrics,
                    self.config.refresh_capacity,
                    self.config.refresh_batch,
                    self.config.refresh_interval,
                    self.config.max_pairs_per_user,
                )
                execute = await self._refresh_executor()
                self.workers = RefreshWorkers(self.queue, execute, self.config.refresh_workers)
                self.workers.start()
        if self.similar is not None and self.user_store is not None and self.aggregate_store is not None:
            self.indexer = SimilarUsersIndexer(
                self.similar,
                self.catalog.user_ids(),
                self.user_store,
                self.aggregate_store,
                every=self.config.similar_users_every,
            )
            self.indexer.start()

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
        if self.stream is not None:
            await self.stream.stop()
        if self.indexer is not None:
            self.indexer.stop()
        self._score_pool.shutdown(wait=True)
        self._refresh_pool.shutdown(wait=True)
        if self._process_pool is not None:
            self._process_pool.shutdown(wait=True, cancel_futures=True)
        for store in (self.user_store, self.pair_store, self.aggregate_store):
            if store is not None:
                store.close()

    async def _refresh_executor(self) -> Execute:
        """How the embedded queue's batches run: in child processes (default; the FM's Python work
        then never holds this process's GIL while a request is being scored) or in a thread."""
        loop = asyncio.get_running_loop()
        refresher = self.refresher
        assert refresher is not None
        if self.config.refresh_in == "thread":
            return lambda jobs: loop.run_in_executor(self._refresh_pool, refresher.run, jobs)
        from fxrec.serving.worker import child_ready, init_child, run_in_child

        targets = refresher.targets
        user_uri = self.store_uris.get("user") if targets.user_store is not None else None
        cache_uri = self.store_uris.get("pairs") if targets.pair_store is not None else None
        self._process_pool = ProcessPoolExecutor(
            self.config.refresh_workers,
            mp_context=multiprocessing.get_context("spawn"),  # fork would copy torch's thread pools
            initializer=init_child,
            initargs=(
                str(self.run.root),
                user_uri,
                cache_uri,
                self.fm_name,
                self.config.model_dump(),
                self.config.background_nice,
            ),
        )
        pool = self._process_pool
        ready = [loop.run_in_executor(pool, child_ready) for _ in range(self.config.refresh_workers)]
        await asyncio.gather(*ready)  # children load the FM and catalog now, not on the first request

        async def execute(jobs: list[RefreshJob]) -> dict[str, int]:
            if self._process_pool is None:  # the children died earlier: the thread took over
                return await loop.run_in_executor(self._refresh_pool, refresher.run, jobs)
            try:
                return await loop.run_in_executor(pool, run_in_child, jobs, self.clock())
            except BrokenProcessPool:
                log.error("the refresh child processes died; refreshing in a thread from now on")
                self._process_pool = None
                return await loop.run_in_executor(self._refresh_pool, refresher.run, jobs)

        return execute

    def _queue_url(self) -> str:
        url = self.config.queue_url or self.config.store
        if not url or not url.startswith("redis://"):
            raise RunError(
                "queue=redis needs a Redis URL: --queue-url redis://host:port/db (or a redis:// --store)"
            )
        return url

    # -- requests -------------------------------------------------------------------------------
    async def score(self, request: ScoreRequest) -> dict:
        loop = asyncio.get_running_loop()
        response, job = await loop.run_in_executor(self._score_pool, self.scorer.score, request)
        self.offer(job)
        return response

    async def run_funnel(self, request) -> dict:
        """`POST /v1/funnel` (fxrec.serving.funnel), on the scoring thread like `score`."""
        if self.funnel is None:
            raise RequestError(
                404, "this server runs no funnel: start it with --funnel on a run where `fxrec funnel` ran"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._score_pool, self.funnel.funnel, request)

    def offer(self, job: RefreshJob) -> None:
        if self.queue is not None:
            self.queue.offer(job)
        elif self.stream is not None:
            self.stream.offer(job)

    def queue_depth(self) -> int:
        if self.queue is not None:
            return self.queue.depth()
        if self.stream is not None:
            return self.stream.depth()
        return 0

    def update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.queue_depth())

    def health(self) -> dict:
        stores = {
            s.name: s.available
            for s in (self.user_store, self.pair_store, self.aggregate_store)
            if s is not None
        }
        return {
            "status": "ok" if all(stores.values()) else "degraded",
            "vm": self.vm.name,
            "mode": self.config.mode,
            "store": stores,
            "refresh_queue_depth": self.queue_depth(),
        }
