"""`fxrec audience serve`: `register(audience_app)` adds it to the audience group.

    fxrec audience serve --index runs/reach --quality runs/pop/quality.json --in-process
    curl -s localhost:8001/v1/reach -d '{"query": "country:US and interest:sports"}'

A missing or broken index or quality file exits with code 2 before anything starts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer


def serve(
    index: Path = typer.Option(..., "--index", "-i", help="a reach index folder (`fxrec audience build`)"),
    quality: Path | None = typer.Option(
        None, "--quality", help="quality.json (`fxrec audience quality`) for POST /v1/quality"
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="bind address (no authentication: keep it on loopback)"
    ),
    port: int = typer.Option(8001, "--port"),
    in_process: bool = typer.Option(False, "--in-process", help="answer in this process, without Ray"),
    shards: int | None = typer.Option(None, "--shards", help="Ray shards (default: the index's shard files)"),
    replicas: int = typer.Option(2, "--replicas", help="Ray actors per shard"),
    address: str | None = typer.Option(
        None, "--address", help="join the Ray cluster at host:port (default: a local Ray, 2 CPUs)"
    ),
    max_body_bytes: int = typer.Option(
        1 << 20, "--max-body-bytes", help="requests with a larger body get 413"
    ),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve the audience API: POST /v1/reach, POST /v1/quality, GET /healthz, GET /metrics."""
    from fxrec.jobs.audience_serve import serve as run_server

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(index, quality, host, port, in_process, shards, replicas, address, log_level, max_body_bytes)


def register(audience_app: typer.Typer) -> None:
    audience_app.command("serve")(serve)
