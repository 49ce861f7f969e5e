"""What every fxrec HTTP API shares: the body limit (413), JSON errors (400), schema errors as 422
with one detail per problem, and the `{"error": ..., "details": [...]}` body of every 4xx.

The scoring API (`app.py`) and the audience API (`audience.py`) both install these, so a client sees
the same guarantees everywhere: whatever it sends, the answer is a 4xx that says what is wrong, never
a 500.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fxrec.serving.validation import RequestError


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
                    await send_error(send, 400, "Content-Length is not a number")
                    return
                if declared > self.max_bytes:
                    await send_error(
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
                await send_error(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes")
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


async def send_error(send: Send, status: int, message: str) -> None:
    response = JSONResponse({"error": message, "details": []}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


_UNION_BRANCHES = {"int", "float", "list[int]", "none"}


def validation_details(error: RequestValidationError) -> list[str]:
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


def install_error_handlers(app: FastAPI, count: Callable[[int], None]) -> None:
    """Bad input of any kind as `{"error", "details"}` with its 4xx; `count(status)` is called for a
    RequestError and a schema error (the app's request counter)."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        count(error.status)
        return JSONResponse({"error": error.message, "details": error.details}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        details = validation_details(error)
        count(422)
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
