"""Prometheus metrics of one server: latency, refresh queue, FM-derived feature sources, staleness.

Each server owns its own `CollectorRegistry` (not the process-global one), so tests and the load
test can run several servers in one process without their counters colliding.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Request latencies on loopback are milliseconds: fine buckets at the low end.
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
)
STALENESS_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "fxrec_requests", "scoring requests by HTTP status", ["status"], registry=registry
        )
        self.latency = Histogram(
            "fxrec_request_latency_seconds",
            "end-to-end latency of POST /v1/score",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_latency = Histogram(
            "fxrec_stage_latency_seconds",
            "latency per scoring stage (validate, store, fm_inline, model)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.candidates = Histogram(
            "fxrec_candidates_per_request",
            "candidates per request",
            buckets=(1, 10, 50, 100, 200, 300, 500),
            registry=registry,
        )
        self.sources = Counter(
            "fxrec_feature_source",
            "candidates served per FM-derived feature and source (hit rates)",
            ["feature", "source"],
            registry=registry,
        )
        self.staleness = Histogram(
            "fxrec_embedding_staleness_seconds",
            "age of the user embedding read on the request path",
            buckets=STALENESS_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "fxrec_refresh_queue_depth", "users waiting for an asynchronous FM refresh", registry=registry
        )
        self.refresh_events = Counter(
            "fxrec_refresh",
            "refresh queue events (enqueued, deduplicated, dropped_overload, done, failed)",
            ["event"],
            registry=registry,
        )
        self.refresh_latency = Histogram(
            "fxrec_refresh_batch_seconds",
            "FM time per refresh batch (background)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.refresh_delay = Histogram(
            "fxrec_refresh_delay_seconds",
            "time from enqueue to the refreshed embedding being written",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.pairs = Counter(
            "fxrec_pair_precompute",
            "SOLARIS (user, item) pairs (predicted, computed, skipped_cached)",
            ["event"],
            registry=registry,
        )
        self.store_up = Gauge(
            "fxrec_store_available",
            "1 if the store answers, 0 while the breaker is open",
            ["store"],
            registry=registry,
        )
        self.store_failures = Counter(
            "fxrec_store_failures", "store faults seen on any path", ["store"], registry=registry
        )

    def store_state(self, name: str, up: bool) -> None:
        self.store_up.labels(store=name).set(1 if up else 0)
        if not up:
            self.store_failures.labels(store=name).inc()
