"""SOAP: the request path reads the store; the FM refreshes it asynchronously, off that path.

Every scored request offers a `RefreshJob` for its user (and the candidates it saw, for SOLARIS).
`RefreshQueue` is the embedded queue, an asyncio structure on the server's event loop:

- deduplicated: a user already waiting is not queued twice (the waiting job absorbs the new
  candidates); a user being refreshed right now, or refreshed less than `min_interval` ago, is skipped;
- bounded: at `capacity`, the oldest waiting job is dropped -- under overload the newest requests
  carry the most recent context, and a dropped user is offered again by their next request;
- drained by a pool of worker tasks, each taking up to `batch_size` jobs and running the FM on them
  off the event loop (`Refresher.run` in a child process by default, or a thread), so neither the
  event loop nor the request path ever waits for the FM.

With Redis, `fxrec.serving.streams` replaces this queue by a Redis Stream that separate
`fxrec refresh-worker` processes consume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fxrec.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)


@dataclass
class RefreshJob:
    """Refresh one user's FM outputs: their embedding (SUM) and pair embeddings for `items` (SOLARIS)."""

    user_id: int
    items: list[int] = field(default_factory=list)  # the request's candidates, most recent first
    context: dict[str, object] = field(default_factory=dict)  # the request's context, for pair rows
    surface: str | None = None
    enqueued_at: float = field(default_factory=time.monotonic)

    def absorb(self, newer: RefreshJob, max_items: int) -> None:
        """Merge a newer request of the same user into this waiting job."""
        seen = dict.fromkeys(newer.items + self.items)
        self.items = list(seen)[:max_items]
        self.context = newer.context or self.context
        self.surface = newer.surface or self.surface


# Runs a batch of jobs off the event loop (a thread or a child process) and returns the
# Refresher's counts (users, pairs predicted / skipped_cached / computed).
Execute = Callable[[list[RefreshJob]], Awaitable[dict[str, int]]]


class RefreshQueue:
    """The embedded SOAP queue (see module docstring). All methods run on the event loop."""

    def __init__(
        self,
        metrics: ServingMetrics,
        capacity: int = 1024,
        batch_size: int = 32,
        min_interval: float = 1.0,
        max_items: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.metrics = metrics
        self.capacity = capacity
        self.batch_size = batch_size
        self.min_interval = min_interval
        self.max_items = max_items
        self.clock = clock
        self._waiting: OrderedDict[int, RefreshJob] = OrderedDict()
        self._in_flight: set[int] = set()
        self._last_done: dict[int, float] = {}
        self._ready = asyncio.Event()

    def depth(self) -> int:
        return len(self._waiting)

    def offer(self, job: RefreshJob) -> bool:
        """Queue a refresh; False if it was merged, skipped or displaced nothing new. Never blocks."""
        user = job.user_id
        job.items = job.items[: self.max_items]
        if user in self._waiting:
            self._waiting[user].absorb(job, self.max_items)
            self.metrics.refresh_events.labels(event="deduplicated").inc()
            return False
        recently = self._last_done.get(user)
        if user in self._in_flight or (recently is not None and self.clock() - recently < self.min_interval):
            self.metrics.refresh_events.labels(event="deduplicated").inc()
            return False
        if len(self._waiting) >= self.capacity:
            self._waiting.popitem(last=False)
            self.metrics.refresh_events.labels(event="dropped_overload").inc()
        self._waiting[user] = job
        self.metrics.refresh_events.labels(event="enqueued").inc()
        self.metrics.queue_depth.set(len(self._waiting))
        self._ready.set()
        return True

    async def take(self) -> list[RefreshJob]:
        """Up to `batch_size` oldest waiting jobs; waits while the queue is empty."""
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        jobs = []
        while self._waiting and len(jobs) < self.batch_size:
            _, job = self._waiting.popitem(last=False)
            jobs.append(job)
            self._in_flight.add(job.user_id)
        self.metrics.queue_depth.set(len(self._waiting))
        return jobs

    def done(self, jobs: list[RefreshJob], ok: bool) -> None:
        now = self.clock()
        for job in jobs:
            self._in_flight.discard(job.user_id)
            self._last_done[job.user_id] = now
            if ok:
                self.metrics.refresh_delay.observe(now - job.enqueued_at)
        self.metrics.refresh_events.labels(event="done" if ok else "failed").inc(len(jobs))
        if len(self._last_done) > 4 * self.capacity + 10_000:  # forget old cooldowns, bounded memory
            cutoff = now - self.min_interval
            self._last_done = {u: t for u, t in self._last_done.items() if t >= cutoff}


class RefreshWorkers:
    """A pool of asyncio tasks draining a RefreshQueue through `execute` (see `Execute`)."""

    def __init__(self, queue: RefreshQueue, execute: Execute, workers: int = 1):
        self.queue = queue
        self.execute = execute
        self.workers = workers
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(), name=f"refresh-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self) -> None:
        metrics = self.queue.metrics
        while True:
            jobs = await self.queue.take()
            started = time.perf_counter()
            try:
                counts = await self.execute(jobs)
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed refresh leaves the old embedding in place; the user is retried later
                log.exception("refresh of %d users failed", len(jobs))
                self.queue.done(jobs, ok=False)
                continue
            metrics.refresh_latency.observe(time.perf_counter() - started)
            for event in ("predicted", "skipped_cached", "computed"):
                if counts.get(event):
                    metrics.pairs.labels(event=event).inc(counts[event])
            self.queue.done(jobs, ok=True)
