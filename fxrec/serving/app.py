"""The HTTP API: `POST /v1/score`, `POST /v1/funnel`, `GET /healthz`, `GET /metrics` (FastAPI).

Every way a request can be wrong ends as a 4xx whose body says what is wrong (`{"error": ...,
"details": [...]}`): bodies over the size limit (413), bodies that are not JSON or do not fit the
schema (422), unknown users or items (404), features the run does not know or the model needs but
did not get (422). Store faults degrade the answer's sources, never its status. The body limit and
the error bodies are fxrec.serving.http's, shared with the audience API.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fxrec.serving.funnel_schemas import FunnelRequest, FunnelResponse
from fxrec.serving.http import BodyLimit, install_error_handlers
from fxrec.serving.schemas import ErrorResponse, Health, ScoreRequest, ScoreResponse

if TYPE_CHECKING:
    from fxrec.serving.service import Service

log = logging.getLogger(__name__)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "the body is not JSON"),
        (404, "unknown user or item"),
        (413, "body too large"),
        (422, "invalid request"),
    )
}


def create_app(service: Service, max_body_bytes: int = 1 << 20) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="fxrec scoring",
        version="1",
        description="Scores ad candidates with an expert model (VM); FM knowledge arrives through the store.",
        lifespan=lifespan,
    )

    install_error_handlers(app, lambda status: service.metrics.requests.labels(status=str(status)).inc())

    @app.post("/v1/score", response_model=ScoreResponse, responses=_ERRORS)
    async def score(body: ScoreRequest) -> Response:
        """Score the candidates for one user; the user is queued for an asynchronous FM refresh."""
        with service.metrics.latency.time():
            result = await service.score(body)
        service.metrics.requests.labels(status="200").inc()
        return JSONResponse(result)

    @app.post("/v1/funnel", response_model=FunnelResponse, responses=_ERRORS)
    async def funnel(body: FunnelRequest) -> Response:
        """One ad request through retrieval, the early-stage ranker and the served VM: the winners."""
        timer = service.funnel.metrics.latency.time() if service.funnel is not None else nullcontext()
        with timer:
            result = await service.run_funnel(body)
        service.metrics.requests.labels(status="200").inc()
        return JSONResponse(result)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        return service.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        service.update_gauges()
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app
