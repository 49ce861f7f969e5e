"""SOAP at scale-out: the refresh queue as a Redis Stream, consumed by `fxrec refresh-worker` processes.

Server side, `RedisRefreshStream.offer` only touches a local dict (the request path never waits on
Redis); a flusher task sends the waiting jobs every few milliseconds in one Lua call that, per user,
sets an in-flight marker `SET NX EX` and XADDs the job only if the marker was not there -- the same
dedup-while-in-flight as the embedded queue, across every server process. XADD's `MAXLEN ~` bounds
the stream: under overload Redis trims the oldest entries. If Redis is down the flusher drops the
batch (counted) and retries later; requests are unaffected.

Worker side, `run_worker` reads the stream through a consumer group (XREADGROUP), runs the same
`Refresher` as the embedded server, XACKs and clears the in-flight markers; entries left pending by
a dead worker are reclaimed after `claim_idle_ms` (XAUTOCLAIM).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections import OrderedDict

import redis
import redis.asyncio as aioredis

from fxrec.serving.metrics import ServingMetrics
from fxrec.serving.soap import RefreshJob

log = logging.getLogger(__name__)
STREAM, GROUP, INFLIGHT = "fxrec:refresh", "refresh-workers", "fxrec:refresh:inflight:"

# KEYS: [stream]; ARGV: [maxlen, inflight_ttl, user1, job1, user2, job2, ...] -> number of jobs added
_ENQUEUE = """
local added = 0
for i = 3, #ARGV, 2 do
  if redis.call('SET', KEYS[2] .. ARGV[i], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'job', ARGV[i + 1])
    added = added + 1
  end
end
return added
"""


def encode_job(job: RefreshJob, event_ts: float) -> str:
    return json.dumps(
        {
            "user": job.user_id,
            "items": job.items,
            "context": job.context,
            "surface": job.surface,
            "ts": event_ts,
        }
    )


def decode_job(payload: bytes | str) -> tuple[RefreshJob, float]:
    data = json.loads(payload)
    job = RefreshJob(
        int(data["user"]),
        [int(i) for i in data.get("items", [])],
        dict(data.get("context") or {}),
        data.get("surface"),
    )
    return job, float(data.get("ts", 0.0))


class RedisRefreshStream:
    """The server's side of the stream (see module docstring); methods run on the event loop."""

    def __init__(
        self,
        url: str,
        metrics: ServingMetrics,
        capacity: int = 1024,
        min_interval: float = 1.0,
        inflight_ttl_s: int = 10,
        flush_every: float = 0.005,
        event_clock=None,
        max_items: int = 256,
    ):
        self.url = url
        self.metrics = metrics
        self.capacity = capacity
        self.min_interval = min_interval
        self.inflight_ttl_s = inflight_ttl_s
        self.flush_every = flush_every
        self.event_clock = event_clock or time.time
        self.max_items = max_items
        self._pending: OrderedDict[int, RefreshJob] = OrderedDict()
        self._sent: dict[int, float] = {}
        self._lag = 0
        self._task: asyncio.Task | None = None
        self._client = aioredis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.1)
        self._script = self._client.register_script(_ENQUEUE)

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="refresh-stream")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.aclose()

    def depth(self) -> int:
        return len(self._pending) + self._lag

    def offer(self, job: RefreshJob) -> bool:
        user = job.user_id
        job.items = job.items[: self.max_items]
        if user in self._pending:
            self._pending[user].absorb(job, self.max_items)
            self.metrics.refresh_events.labels(event="deduplicated").inc()
            return False
        sent = self._sent.get(user)
        if sent is not None and time.monotonic() - sent < self.min_interval:
            self.metrics.refresh_events.labels(event="deduplicated").inc()
            return False
        if len(self._pending) >= self.capacity:
            self._pending.popitem(last=False)
            self.metrics.refresh_events.labels(event="dropped_overload").inc()
        self._pending[user] = job
        return True

    async def _flush_loop(self) -> None:
        last_lag = 0.0
        while True:
            await asyncio.sleep(self.flush_every)
            if self._pending:
                jobs = list(self._pending.values())
                self._pending.clear()
                await self._flush(jobs)
            if time.monotonic() - last_lag > 1.0:
                last_lag = time.monotonic()
                await self._update_lag()

    async def _flush(self, jobs: list[RefreshJob]) -> None:
        now = time.monotonic()
        event_ts = self.event_clock()
        args: list[object] = [self.capacity, self.inflight_ttl_s]
        for job in jobs:
            args += [job.user_id, encode_job(job, event_ts)]
        try:
            added = await self._script(keys=[STREAM, INFLIGHT], args=args)
        except (redis.exceptions.RedisError, OSError) as error:
            self.metrics.refresh_events.labels(event="dropped_unavailable").inc(len(jobs))
            log.debug("refresh stream unavailable: %s", error)
            await asyncio.sleep(0.25)
            return
        for job in jobs:
            self._sent[job.user_id] = now
        self.metrics.refresh_events.labels(event="enqueued").inc(int(added))
        self.metrics.refresh_events.labels(event="deduplicated").inc(len(jobs) - int(added))
        if len(self._sent) > 100_000:
            self._sent = {u: t for u, t in self._sent.items() if now - t < self.min_interval}

    async def _update_lag(self) -> None:
        try:
            groups = await self._client.xinfo_groups(STREAM)
        except (redis.exceptions.RedisError, OSError):
            return
        lags = [int(g.get("lag") or 0) + int(g.get("pending") or 0) for g in groups]
        self._lag = max(lags) if lags else int(await self._client.xlen(STREAM))


class SyncedClock:
    """A worker's event clock, set from the event time each job was enqueued at (the server's clock)."""

    def __init__(self, start_ts: float):
        self._offset = start_ts - time.time()

    def observe(self, event_ts: float) -> None:
        if event_ts > 0:
            self._offset = event_ts - time.time()

    def __call__(self) -> float:
        return time.time() + self._offset


def run_worker(
    url: str,
    refresher,
    clock: SyncedClock,
    batch_size: int = 32,
    stop_after: float | None = None,
    claim_idle_ms: int = 30_000,
    stop: threading.Event | None = None,
) -> int:
    """Consume the refresh stream until interrupted, `stop` is set or `stop_after` seconds; returns
    the number of jobs processed. Survives Redis restarts: reconnects and recreates its group."""
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=0.5)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    deadline = None if stop_after is None else time.monotonic() + stop_after
    processed = 0
    group_ready = False
    stop = stop or threading.Event()
    while (deadline is None or time.monotonic() < deadline) and not stop.is_set():
        try:
            if not group_ready:
                try:
                    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
                except redis.exceptions.ResponseError as error:
                    if "BUSYGROUP" not in str(error):
                        raise
                group_ready = True
            _, claimed, _ = client.xautoclaim(
                STREAM, GROUP, consumer, min_idle_time=claim_idle_ms, count=batch_size
            )
            entries = claimed or []
            if not entries:
                reply = client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=batch_size, block=500)
                entries = reply[0][1] if reply else []
            entries = [(entry_id, fields) for entry_id, fields in entries if fields]
            if not entries:
                continue
            jobs = []
            for _, fields in entries:
                job, event_ts = decode_job(fields[b"job"])
                clock.observe(event_ts)
                jobs.append(job)
            refresher.run(jobs)
            client.xack(STREAM, GROUP, *[entry_id for entry_id, _ in entries])
            client.delete(*[f"{INFLIGHT}{job.user_id}" for job in jobs])
            processed += len(jobs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as error:
            log.warning("refresh worker: Redis unavailable (%s); retrying", error)
            group_ready = False
            stop.wait(0.25)
        except redis.exceptions.ResponseError as error:
            if "NOGROUP" not in str(error):  # a restarted Redis lost the group: make it again
                raise
            group_ready = False
    client.close()
    return processed
