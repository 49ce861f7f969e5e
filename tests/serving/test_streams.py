"""The Redis Stream refresh queue: deduplicated across flushes, consumed by refresh-worker processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
import redis
from helpers import last_day_events, request_for

from fxrec.serving.metrics import ServingMetrics
from fxrec.serving.soap import RefreshJob
from fxrec.serving.streams import INFLIGHT, STREAM, RedisRefreshStream, decode_job
from fxrec.store.redis_server import RedisServer, find_redis_server

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="redis-server is not installed")


def test_stream_deduplicates_users_in_flight():
    async def scenario(url: str) -> None:
        stream = RedisRefreshStream(url, ServingMetrics(), min_interval=0.0, flush_every=0.001)
        stream.start()
        stream.offer(RefreshJob(1, [10], {"hour": 3}, "feed"))
        stream.offer(RefreshJob(1, [11]))  # merged while waiting locally
        stream.offer(RefreshJob(2, [20]))
        await asyncio.sleep(0.1)
        stream.offer(RefreshJob(1, [12]))  # user 1 is in flight in Redis: not added again
        await asyncio.sleep(0.1)
        await stream.stop()

    with RedisServer() as server:
        asyncio.run(scenario(server.url))
        client = redis.Redis.from_url(server.url)
        entries = client.xrange(STREAM)
        jobs = [decode_job(fields[b"job"])[0] for _, fields in entries]
        assert [j.user_id for j in jobs] == [1, 2]
        assert jobs[0].items == [11, 10] and jobs[0].context == {"hour": 3}
        assert client.exists(f"{INFLIGHT}1") and client.ttl(f"{INFLIGHT}1") > 0


@pytest.mark.slow
def test_refresh_worker_process_serves_the_next_request(served_run, small_log, catalog):
    import httpx

    from fxrec.serving.server import BackgroundServer
    from fxrec.serving.service import Service, ServingConfig

    event = last_day_events(small_log).row(0, named=True)
    request = request_for(catalog, event)
    with RedisServer() as server:
        url = server.url
        service = Service(
            served_run,
            "vm_transfer",
            ServingConfig(mode="async", store=url, cache=url, queue="redis"),
            catalog=catalog,
        )
        command = [
            sys.executable,
            "-m",
            "fxrec.cli",
            "refresh-worker",
            "--run",
            str(served_run),
            "--store",
            url,
            "--seconds",
            "60",
        ]
        worker = subprocess.Popen(command)
        try:
            with BackgroundServer(service) as live, httpx.Client(base_url=live.url) as client:
                deadline = time.monotonic() + 60
                source = None
                while time.monotonic() < deadline and source != "fresh":
                    response = client.post("/v1/score", json=request)
                    assert response.status_code == 200
                    source = response.json()["candidates"][0]["sources"]["sum_user"]
                    time.sleep(0.3)
                assert source == "fresh", "the worker process never refreshed the user"
        finally:
            worker.terminate()
            worker.wait(10)
