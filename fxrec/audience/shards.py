"""Reach estimation sharded over Ray actors, each shard replicated: queries keep answering while a
replica dies and is replaced.

The sample's rows are split into S shards (fxrec.audience.statistics.SampleRows.split: each row keeps
its stratum and weight). Each shard is held by R `ShardHolder` actors (replicas, R = 2 by default).
`ShardedReachIndex.query(expr)` runs fxrec's one reach estimator (fxrec.audience.reach.ReachEstimator)
with the shards as its statistics: each request scatters to one live replica per shard (round robin
over the live ones), gathers the shards' partial sums and adds them, so the answer is the in-process
`ReachIndex`'s up to the order of float additions, the fall-back included.

Faults: a call that finds its replica dead (`ray.exceptions.RayActorError`: killed, crashed, its node
gone) or silent past `timeout` is sent again to another live replica of the shard, and the dead one
is handed to the supervisor, a driver thread that starts a new actor for the shard from a live
replica's rows (the rows travel replica -> object store -> new actor, never through the driver), or
from the shard's source (its shard file in the index folder, or the copy put in the object store at
start) when no replica is left, waits until it answers, and adds it to the shard's replicas. The
supervisor also pings every replica each `check_every` seconds, so a replica that dies between
queries is replaced too. A query finds no replica only when all R of a shard died at once; it then
waits (up to `timeout`) for the supervisor's replacement.

Ray: an already initialised Ray is used as it is; otherwise `address` joins a running cluster
(`ray start --head` prints it) or, by default, a local Ray starts with `num_cpus=2` and no dashboard,
and `close()` shuts it down. Actors ask for no CPU of their own (they answer in a few milliseconds
each) and are spread over the cluster's nodes. Ray is the `ray` extra: fxrec imports it only here,
when a sharded index starts.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxrec.audience.query import Query
from fxrec.audience.reach import Estimate, ReachEstimator
from fxrec.audience.statistics import Cells, SampleRows, Sums, Surface, Target, add
from fxrec.cluster import import_ray, start_ray
from fxrec.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardFile:
    """Shard `index` of the index folder at `path` (fxrec.audience.stored_index)."""

    path: Path
    index: int


class ShardHolder:
    """One replica of one shard: its sample rows in memory, answering for them (a Ray actor)."""

    def __init__(self, source: SampleRows | ShardFile):
        if isinstance(source, ShardFile):
            from fxrec.audience.stored_index import load_shard

            source = load_shard(source.path, source.index)
        self.rows = source

    def ping(self) -> int:
        return len(self.rows)

    def export(self) -> SampleRows:
        """The rows, for a new replica of the shard."""
        return self.rows

    def target_sums(self, targets: list[Target]) -> dict[Target, Sums]:
        return self.rows.target_sums(targets)

    def rate_sums(self, targets: list[Target]) -> dict[Target, Cells]:
        return dict(self.rows.rate_sums(targets, lazy=False))

    def base_sums(self, surfaces: list[Surface]) -> dict[Surface, Cells]:
        return self.rows.base_sums(surfaces)


class ShardUnavailable(RuntimeError):
    """Every replica of a shard is gone and none came back within the timeout."""


def _ray():
    return import_ray("sharded reach estimation")


class ShardedReachIndex:
    """A reach index whose sample rows live on Ray actors: S shards x R replicas (see the module
    docstring). `shards`: each shard's rows (put in the object store once), or its file in an index
    folder (each actor reads its own)."""

    def __init__(
        self,
        estimator: ReachEstimator,
        shards: list[SampleRows] | list[ShardFile],
        replicas: int = 2,
        address: str | None = None,
        num_cpus: int = 2,
        timeout: float = 30.0,
        check_every: float = 1.0,
    ):
        if replicas < 1 or not shards:
            raise InputError(
                f"a sharded index needs at least one shard and one replica (got {len(shards)}, {replicas})"
            )
        self.estimator, self.timeout, self.check_every = estimator, timeout, check_every
        self._ray = _ray()
        self._owns_ray = start_ray(address, num_cpus, purpose="sharded reach estimation")
        ray = self._ray
        self._errors = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError)
        self._holder = ray.remote(ShardHolder).options(
            num_cpus=0, max_restarts=0, max_task_retries=0, scheduling_strategy="SPREAD"
        )
        self.sources = [ray.put(s) if isinstance(s, SampleRows) else s for s in shards]
        self._lock = threading.Lock()
        self._replicas: list[list[Any]] = [[] for _ in shards]
        self._turns = [itertools.count(s) for s in range(len(shards))]  # round robin per shard
        self.replaced = 0  # actors the supervisor started in place of dead ones
        self.retried = 0  # calls sent again to another replica
        started = [[self._holder.remote(source) for _ in range(replicas)] for source in self.sources]
        try:
            ray.get(
                [actor.ping.remote() for actors in started for actor in actors], timeout=max(timeout, 120)
            )
        except Exception:
            self._kill_all(started)
            self._shutdown()
            raise
        self._replicas = started
        self._lost: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._supervisor = threading.Thread(
            target=self._supervise, name="reach-shard-supervisor", daemon=True
        )
        self._supervisor.start()

    # what callers use
    def query(self, expr: str | Query, detail: dict | None = None) -> Estimate:
        """The estimate, as `ReachIndex.query` gives it (`detail`: see `ReachEstimator.answer`)."""
        return self.estimator.answer(expr, self, detail)

    def replicas(self, shard: int) -> list[Any]:
        """The shard's live replicas (actor handles), as the index knows them now."""
        with self._lock:
            return list(self._replicas[shard])

    def live(self) -> list[int]:
        """Live replicas per shard."""
        with self._lock:
            return [len(actors) for actors in self._replicas]

    def wait_replicated(self, replicas: int, timeout: float = 60.0) -> bool:
        """Wait until every shard has `replicas` live replicas again (True) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if min(self.live()) >= replicas:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Stop the supervisor and the actors (and a Ray this index started)."""
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
            self._supervisor.join(timeout=self.timeout)
        with self._lock:
            actors, self._replicas = self._replicas, [[] for _ in self._replicas]
        self._kill_all(actors)
        self._shutdown()

    def __enter__(self) -> ShardedReachIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # the estimator's statistics: scatter, gather, add
    def target_sums(self, targets: list[Target]) -> dict[Target, Sums]:
        return add(self._scatter("target_sums", targets))

    def rate_sums(self, targets: list[Target]) -> dict[Target, Cells]:
        return add(self._scatter("rate_sums", targets))

    def base_sums(self, surfaces: list[Surface]) -> dict[Surface, Cells]:
        return add(self._scatter("base_sums", surfaces))

    def _scatter(self, method: str, *args) -> list:
        """Call `method` on one live replica of every shard; a replica found dead is replaced by the
        supervisor and the call goes to another one."""
        calls = {shard: self._call(shard, method, args, tried=()) for shard in range(len(self.sources))}
        results: list = [None] * len(self.sources)
        for shard in range(len(self.sources)):
            tried: tuple = ()
            actor, ref = calls[shard]
            while True:
                try:
                    results[shard] = self._ray.get(ref, timeout=self.timeout)
                    break
                except self._errors as error:
                    self.retried += 1
                    log.warning(
                        "shard %d: a replica failed (%s); asking another", shard, type(error).__name__
                    )
                    self._report(shard, actor)
                    tried = (*tried, actor)
                    actor, ref = self._call(shard, method, args, tried)
        return results

    def _call(self, shard: int, method: str, args: tuple, tried: tuple) -> tuple[Any, Any]:
        """Submit `method` to a live replica of the shard not in `tried` (waiting for the supervisor when
        there is none)."""
        deadline = time.monotonic() + self.timeout
        while True:
            with self._lock:
                actors = [a for a in self._replicas[shard] if not any(a is t for t in tried)]
            if actors:
                actor = actors[next(self._turns[shard]) % len(actors)]
                return actor, getattr(actor, method).remote(*args)
            if time.monotonic() > deadline:
                raise ShardUnavailable(f"shard {shard}: no live replica within {self.timeout:.0f}s")
            tried = ()  # replicas tried before may have been replaced since: any live one will do
            time.sleep(0.01)

    def _report(self, shard: int, actor: Any) -> None:
        """The replica failed: take it out of the shard's replicas and have the supervisor replace it."""
        with self._lock:
            known = any(a is actor for a in self._replicas[shard])
            self._replicas[shard] = [a for a in self._replicas[shard] if a is not actor]
        if known:
            self._lost.put((shard, actor))

    # the supervisor
    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                shard, actor = self._lost.get(timeout=self.check_every)
            except queue.Empty:
                self._check()
                continue
            try:
                self._ray.kill(actor)  # a replica that timed out may still run: it is replaced anyway
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._replace(shard)

    def _check(self) -> None:
        """Ping every replica; the ones that do not answer are replaced."""
        with self._lock:
            actors = [(shard, a) for shard, group in enumerate(self._replicas) for a in group]
        pings = [(shard, actor, actor.ping.remote()) for shard, actor in actors]
        for shard, actor, ping in pings:
            try:
                self._ray.get(ping, timeout=self.timeout)
            except self._errors:
                self._report(shard, actor)

    def _replace(self, shard: int) -> None:
        """A new replica for the shard: from a live replica's rows, else from the shard's source."""
        while not self._stop.is_set():
            with self._lock:
                live = list(self._replicas[shard])
            sources = [live[0].export.remote()] if live else []
            for source in [*sources, self.sources[shard]]:
                actor = self._holder.remote(source)
                try:
                    self._ray.get(actor.ping.remote(), timeout=max(self.timeout, 60))
                except self._errors + (self._ray.exceptions.RayTaskError,) as error:
                    log.warning("shard %d: a new replica failed to start (%s)", shard, error)
                    self._ray.kill(actor)
                    continue
                with self._lock:
                    self._replicas[shard].append(actor)
                    self.replaced += 1
                return
            time.sleep(self.check_every)  # no source answered: try again

    def _kill_all(self, groups: list[list[Any]]) -> None:
        for actor in (a for group in groups for a in group):
            try:
                self._ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _shutdown(self) -> None:
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False
