"""The audience API: `POST /v1/reach`, `POST /v1/quality`, `GET /healthz`, `GET /metrics` (FastAPI).

An advertiser's tool asks how many users a targeting query reaches and which data providers' segments
to trust, before the campaign runs. The guarantees are the scoring API's (fxrec.serving.http): bodies
over the limit are 413, bodies that are not JSON 400, bodies that do not fit the schema 422 with one
detail per problem; a query that does not parse or names what the index lacks is 422 with the column
and a caret line under the offending token; an unknown provider or segment is 404. Nothing a client
sends produces a 500: an index that cannot answer (a Ray cluster gone) is 503.

The index is anything with `query(Query) -> Estimate` and a schema (its own or its estimator's): the
in-process `fxrec.audience.reach.ReachIndex`, or the Ray-sharded `fxrec.audience.shards` one. Queries
run on a worker thread, so a slow one never blocks `/healthz`; an index that is not safe to query from
several threads at once (the in-process one keeps caches) is queried one request at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fxrec.audience.query import And, Query, QueryError, Surface, parse
from fxrec.audience.reach import Estimate
from fxrec.audience.schema import AudienceSchema
from fxrec.serving.audience_quality import QualityTable
from fxrec.serving.audience_schemas import (
    AudienceHealth,
    QualityRequest,
    QualityResponse,
    QueryErrorResponse,
    ReachRequest,
    ReachResponse,
)
from fxrec.serving.http import BodyLimit, install_error_handlers
from fxrec.serving.metrics import LATENCY_BUCKETS
from fxrec.serving.schemas import ErrorResponse
from fxrec.serving.validation import RequestError

log = logging.getLogger(__name__)
MAX_STRATA_SHOWN = 10  # fall-back strata a reach answer names
ENDPOINTS = ("/v1/reach", "/v1/quality", "/healthz", "/metrics")
_BLANKS = {ord(c): " " for c in "\t\r\n\v\f"}  # one line, so a caret lines up under its column
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the body is not JSON"},
    413: {"model": ErrorResponse, "description": "body too large"},
    503: {"model": ErrorResponse, "description": "the index cannot answer now"},
}


class ReachAnswering(Protocol):
    """What the API needs of a reach index (in-process or sharded): `query`, and a `schema` of its
    own or its estimator's."""

    def query(self, expr: str | Query, detail: dict | None = None) -> Estimate: ...


class AudienceMetrics:
    """Prometheus metrics of one audience server, in its own registry."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "fxrec_audience_requests",
            "audience API requests by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "fxrec_audience_request_latency_seconds",
            "latency of audience API requests by endpoint (every status)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.fallbacks = Counter(
            "fxrec_audience_reach_fallbacks",
            "reach answers that blended in coarser strata (too few sampled users)",
            registry=registry,
        )


class Counted:
    """Counts every response by endpoint and status and times it, 413s and 400s included (it wraps
    the body limit). Paths the API does not serve count as `other`, so fuzzed paths cannot grow the
    metrics without bound."""

    def __init__(self, app: ASGIApp, metrics: AudienceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope.get("path") if scope.get("path") in ENDPOINTS else "other"
        status = 500  # what a response that never started amounts to
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()


def query_error(error: QueryError) -> JSONResponse:
    """A QueryError as 422: details are the reason with its column, the query and the caret line."""
    lines = str(error).split("\n")
    text = lines[1][2:] if len(lines) > 1 else ""
    caret = lines[2][2:] if len(lines) > 2 else " " * (error.column - 1) + "^"
    body = QueryErrorResponse(
        error=f"invalid query: {error.reason} (column {error.column})",
        details=[f"query: column {error.column}: {error.reason}", text, caret],
        column=error.column,
        caret=caret,
    )
    return JSONResponse(body.model_dump(), status_code=422)


class AudienceService:
    """The reach index and the quality table behind the audience API.

    `serialize`: query the index one request at a time (the in-process ReachIndex); a sharded index
    that answers concurrent queries passes False. `describe` is what /healthz says about the index.
    """

    def __init__(
        self,
        index: ReachAnswering,
        quality: QualityTable | None = None,
        describe: dict | Callable[[], dict] | None = None,
        serialize: bool = True,
        on_stop: Callable[[], None] | None = None,
    ):
        self.index, self.quality_table = index, quality
        estimator = getattr(index, "estimator", None)
        self.schema: AudienceSchema = getattr(index, "schema", None) or estimator.schema
        self.describe = describe or {"kind": type(index).__name__}
        self.metrics = AudienceMetrics()
        self._lock = threading.Lock() if serialize else None
        self._on_stop = on_stop
        z = getattr(estimator, "z", getattr(index, "z", 1.96))
        self.confidence = math.erf(float(z) / math.sqrt(2))
        if self.schema.surfaces:  # build the parser now, not on the first request
            parse(f"surface = {self.schema.surfaces[0]}", self.schema)

    def close(self) -> None:
        if self._on_stop is not None:
            self._on_stop()

    def bind(self, body: ReachRequest) -> Query:
        """The request's query parsed against the index's schema, restricted to its surface."""
        text = body.query.translate(_BLANKS)
        query = parse(text, self.schema)  # QueryError: 422 with the caret
        if body.surface is None:
            return query
        surfaces = self.schema.surfaces
        wanted = body.surface.lower()
        code = next((i for i, name in enumerate(surfaces) if name.lower() == wanted), None)
        if code is None:
            raise RequestError(
                422,
                f"unknown surface {body.surface!r}; expected one of {', '.join(surfaces)}",
                [f"surface: expected one of {', '.join(surfaces)}"],
            )
        return Query(text, And((query.node, Surface(frozenset({code})))))

    def _answer(self, query: Query) -> tuple[Estimate, list[dict], int]:
        if self._lock is None:
            return self._explained(query)
        with self._lock:
            return self._explained(query)

    def _explained(self, query: Query) -> tuple[Estimate, list[dict], int]:
        """The estimate, and the strata the fall-back entered (the first MAX_STRATA_SHOWN, in words)
        with their count, when the index has fxrec's estimator (`query(expr, detail)`: in process and
        on Ray alike)."""
        estimator = getattr(self.index, "estimator", None)
        if estimator is None or not hasattr(estimator, "stratum_label"):
            return self.index.query(query), [], 0
        detail: dict = {}
        estimate = self.index.query(query, detail)
        entered = detail.get("fallback_strata", [])
        shown = [
            {
                "stratum": estimator.stratum_label(h),
                "users": int(estimator.census.users[h]),
                "sampled": int(estimator.taken[h]),
            }
            for h in entered[:MAX_STRATA_SHOWN]
        ]
        return estimate, shown, len(entered)

    async def reach(self, body: ReachRequest) -> dict:
        started = time.perf_counter()
        try:
            query = self.bind(body)
            parsed = time.perf_counter()
            estimate, strata, entered = await asyncio.to_thread(self._answer, query)
        except (QueryError, RequestError):
            raise
        except RecursionError:
            raise RequestError(
                422, "the query nests too deeply", ["query: fewer nested parentheses or `not`s"]
            ) from None
        except Exception as error:  # the index could not answer: the client's request was fine
            log.exception("the reach index failed on %r", body.query)
            raise RequestError(503, f"the reach index could not answer ({type(error).__name__})") from None
        done = time.perf_counter()
        values = [estimate.users, estimate.users_low, estimate.users_high]
        values += [estimate.impressions, estimate.impressions_low, estimate.impressions_high]
        if not all(math.isfinite(v) for v in values):
            log.error("non-finite estimate for %r: %s", body.query, estimate)
            raise RequestError(503, "the reach index gave no finite estimate for this query")
        if estimate.fallback:
            self.metrics.fallbacks.inc()
        return {
            "request_id": body.request_id,
            "query": query.text,
            "surface": body.surface,
            "users": {"estimate": estimate.users, "low": estimate.users_low, "high": estimate.users_high},
            "impressions": {
                "estimate": estimate.impressions,
                "low": estimate.impressions_low,
                "high": estimate.impressions_high,
            },
            "confidence": round(self.confidence, 4),
            "support": int(estimate.support),
            "fell_back": bool(estimate.fallback),
            "fallback_strata": strata,
            "fallback_strata_count": entered,
            "exact": bool(estimate.exact),
            "timings_ms": {
                "parse": round((parsed - started) * 1000, 3),
                "query": round((done - parsed) * 1000, 3),
            },
        }

    def quality(self, body: QualityRequest) -> dict:
        if self.quality_table is None:
            raise RequestError(
                404,
                "no quality table is served here",
                ["start the server with --quality FILE (what `fxrec audience quality` writes)"],
            )
        return self.quality_table.select(body.provider, body.segment)

    def health(self) -> dict:
        """`degraded` while a Ray shard has no live replica (its supervisor is replacing it)."""
        index = self.describe() if callable(self.describe) else self.describe
        live = index.get("live_replicas")
        status = "degraded" if live is not None and min(live, default=1) == 0 else "ok"
        return {"status": status, "index": index, "quality": self.quality_table is not None}


def create_audience_app(service: AudienceService, max_body_bytes: int = 1 << 20) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="fxrec audience",
        version="1",
        description="Reach of a targeting query from a stratified sample; data providers' quality.",
        lifespan=lifespan,
    )
    install_error_handlers(app, lambda status: None)  # `Counted` counts every status

    @app.exception_handler(QueryError)
    async def invalid_query(request, error: QueryError) -> JSONResponse:
        return query_error(error)

    @app.post(
        "/v1/reach",
        response_model=ReachResponse,
        responses={
            **_ERRORS,
            422: {"model": QueryErrorResponse, "description": "invalid request or query"},
        },
    )
    async def reach(body: ReachRequest) -> Response:
        """Users and impressions a targeting query reaches, with confidence intervals."""
        return JSONResponse(await service.reach(body))

    @app.post(
        "/v1/quality",
        response_model=QualityResponse,
        responses={
            **_ERRORS,
            404: {"model": ErrorResponse, "description": "unknown provider or segment, or no table"},
            422: {"model": ErrorResponse, "description": "invalid request"},
        },
    )
    async def quality(body: QualityRequest) -> Response:
        """Data providers' quality per segment (precision, false-positive rate, ranking)."""
        return JSONResponse(service.quality(body))

    @app.get("/healthz", response_model=AudienceHealth)
    async def healthz() -> dict:
        return service.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(Counted, metrics=service.metrics)
    return app


def serve_audience(
    service: AudienceService,
    host: str = "127.0.0.1",
    port: int = 8001,
    log_level: str = "info",
    max_body_bytes: int = 1 << 20,
) -> None:
    """Serve the audience API until interrupted (uvicorn, one process, like `fxrec serve`)."""
    import uvicorn

    from fxrec.serving.server import _uvicorn_config

    app = create_audience_app(service, max_body_bytes)
    uvicorn.Server(_uvicorn_config(app, host, port, log_level)).run()
