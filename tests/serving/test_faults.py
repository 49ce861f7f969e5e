"""Redis stopped in the middle of a load run: the service keeps answering (fallback sources, no 5xx)
and recovers within seconds when Redis is back. A real redis-server process, a real HTTP server."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
from helpers import last_day_events, request_for

from fxrec.serving.guard import wait_until
from fxrec.serving.server import BackgroundServer
from fxrec.serving.service import Service, ServingConfig
from fxrec.serving.streams import run_worker
from fxrec.serving.worker import build_refresher
from fxrec.store.redis_server import RedisServer, find_redis_server

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="redis-server is not installed")


class Load:
    """A client thread that keeps scoring and records (time, status, SUM source, TAE sources)."""

    def __init__(self, url: str, requests: list[dict]):
        self.url, self.requests = url, requests
        self.records: list[tuple[float, int, str | None, tuple]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            i = 0
            while not self.stop.is_set():
                response = client.post("/v1/score", json=self.requests[i % len(self.requests)])
                body = response.json()
                sources = body.get("sources", {})
                self.records.append(
                    (
                        time.monotonic(),
                        response.status_code,
                        next(iter(sources.get("sum_user", {})), None),
                        tuple(sources.get("tae", {})),
                    )
                )
                i += 1
                time.sleep(0.005)

    def since(self, t: float) -> list:
        return [r for r in self.records if r[0] >= t]


def test_redis_outage_mid_load(served_run, small_log, catalog):
    events = last_day_events(small_log)
    users = events["user_id"].unique().to_list()[:5]
    requests = [request_for(catalog, events.filter(events["user_id"] == u).row(0, named=True)) for u in users]
    with RedisServer() as redis_server:
        url = redis_server.url
        config = ServingConfig(
            mode="async", store=url, cache=url, queue="redis", refresh_interval=0.2, probe_every=0.2
        )
        service = Service(served_run, "vm_transfer", config, catalog=catalog)
        refresher, clock, stores = build_refresher(served_run, url, url, config=config, catalog=catalog)
        stop_worker = threading.Event()
        worker = threading.Thread(
            target=run_worker, args=(url, refresher, clock), kwargs={"stop": stop_worker}, daemon=True
        )
        worker.start()
        with BackgroundServer(service) as server:
            load = Load(server.url, requests)
            load.thread.start()
            try:
                assert wait_until(lambda: any(r[2] == "fresh" for r in load.records), 20), (
                    "no fresh embedding before the outage"
                )
                redis_server.stop()
                down = time.monotonic()
                time.sleep(2.0)
                during = load.since(down + 0.5)
                health = httpx.get(server.url + "/healthz").json()
                redis_server.start()
                back = time.monotonic()
                assert wait_until(lambda: any(r[2] == "fresh" for r in load.since(back)), 15), (
                    "no fresh embedding after Redis came back"
                )
                recovered = next(r[0] for r in load.since(back) if r[2] == "fresh") - back
            finally:
                load.stop.set()
                load.thread.join(5)
                stop_worker.set()
                worker.join(5)
                for store in stores:
                    store.close()
    statuses = Counter(r[1] for r in load.records)
    print(
        f"outage test: {len(load.records)} answers {dict(statuses)}; during the outage {len(during)} answers, SUM sources "
        f"{Counter(r[2] for r in during)}; fresh again {recovered:.2f}s after Redis came back"
    )
    assert set(statuses) == {200}, f"non-200 answers: {statuses}"
    assert len(during) >= 10, "the service stopped answering while Redis was down"
    assert {r[2] for r in during} <= {"stale", "missing"}  # the local copy or nothing, never a 5xx
    assert health["status"] == "degraded" and not health["store"]["user"]
    assert recovered < 5.0, f"took {recovered:.1f}s to serve fresh embeddings again"
