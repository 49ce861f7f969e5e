"""The HTTP API: `POST /v1/score`, `POST /v1/funnel`, `GET /healthz`, `GET /metrics` (FastAPI).

Every way a request can be wrong ends as a 4xx whose body says what is wrong (`{"error": ...,
"details": [...]}`): bodies over the size limit (413), bodies that are not JSON or do not fit the
schema (422), unknown users or items (404), features the run does not know or the model needs but
did not get (422). Store faults degrade the answer's sources, never its status.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fxrec.serving.funnel_schemas import FunnelRequest, FunnelResponse
from fxrec.serving.schemas import ErrorResponse, Health, ScoreRequest, ScoreResponse
from fxrec.serving.validation import RequestError

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


class BodyLimit:
    """Rejects request bodies over `max_bytes` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "Content-Length is not a number")
                    return
                if declared > self.max_bytes:
                    await _send_error(
                        send,
                        413,
                        f"request body of {declared} bytes exceeds the limit of {self.max_bytes} bytes",
                    )
                    return
        # Read the whole body here (it is small by definition) and replay it to the app: a limit
        # enforced mid-stream inside the app would surface as FastAPI's generic 400.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await _send_error(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(send: Send, status: int, message: str) -> None:
    response = JSONResponse({"error": message, "details": []}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


_UNION_BRANCHES = {"int", "float", "list[int]", "none"}


def _validation_details(error: RequestValidationError) -> list[str]:
    """One line per problem: 'where: what'. A feature value matches none of the union's branches
    (id, number, list of ids, null): pydantic reports one error per branch; say it once."""
    details: dict[str, str] = {}
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ()) if part != "body"]
        branch = next((i for i, part in enumerate(location) if part in _UNION_BRANCHES), None)
        if branch is not None:
            where = ".".join(location[:branch])
            shown = repr(item.get("input"))
            shown = shown if len(shown) <= 40 else shown[:40] + "..."
            details.setdefault(
                where,
                f"{where}: expected a feature value (an id, a number, a list of ids or null), got {shown}",
            )
        else:
            where = ".".join(location) or "body"
            details.setdefault(where + item.get("msg", ""), f"{where}: {item.get('msg', 'invalid')}")
        if len(details) >= 20:
            break
    return list(details.values())


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

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        service.metrics.requests.labels(status=str(error.status)).inc()
        return JSONResponse({"error": error.message, "details": error.details}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        details = _validation_details(error)
        service.metrics.requests.labels(status="422").inc()
        summary = (
            details[0]
            if len(details) == 1
            else f"{len(details)} problems; the first: {details[0]}"
            if details
            else "invalid request"
        )
        return JSONResponse({"error": f"invalid request: {summary}", "details": details}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail)
        if message == "There was an error parsing the body":  # FastAPI's words for undecodable JSON
            message = "the body is not valid JSON (malformed, not UTF-8, or nested too deeply)"
        return JSONResponse(
            {"error": message, "details": []}, status_code=error.status_code, headers=error.headers
        )

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
