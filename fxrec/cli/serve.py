"""`fxrec serve`, `fxrec loadtest`, `fxrec refresh-worker`: `register(app)` adds them to a Typer app.

Every `ServingConfig` field is an option of `serve`, generated from the model so the CLI and the
config cannot drift apart.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from fxrec.jobs.serve import ServingConfig

console = Console()


def _config_parameters() -> list[inspect.Parameter]:
    parameters = []
    for name, field in ServingConfig.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        annotation = field.annotation
        if annotation == bool | None:
            option = typer.Option(None, f"{flag}/--no-{name.replace('_', '-')}", help=_help(name))
        else:
            option = typer.Option(field.default, flag, help=_help(name))
        if annotation is not None and "Literal" in str(annotation):
            annotation = str  # Typer cannot render Literal; the config validates the value
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
        )
    return parameters


_HELP = {
    "mode": "vm (VM only) | async (SOAP refresh + SOLARIS precompute in the background) | inline (FM on the request path)",
    "store": "user-embedding store URI (lmdb:///dir or redis://host:port/db); default: the run's published store",
    "cache": "SOLARIS pair-cache URI; default: lmdb://<run>/serving/solaris",
    "queue": "local (asyncio queue in the server) | redis (Redis Stream, consumed by `fxrec refresh-worker`)",
    "queue_url": "Redis URL of the refresh stream (default: --store when it is redis://)",
    "fresh_seconds": "an embedding of the serving FM younger than this reads as 'fresh'",
    "pair_ttl_seconds": "how long a precomputed pair embedding stays valid",
    "threads": "torch threads per forward pass",
    "max_body_bytes": "requests with a larger body get 413",
    "funnel": "also serve POST /v1/funnel: retrieval -> early-stage ranker -> this VM (run `fxrec funnel` first)",
}


def _help(name: str) -> str:
    return _HELP.get(name, name.replace("_", " "))


def _config(values: dict[str, Any]) -> ServingConfig:
    try:
        return ServingConfig(**{k: v for k, v in values.items() if k in ServingConfig.model_fields})
    except ValueError as error:  # pydantic's ValidationError
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(code=2) from None


def _with_config_options(function):
    """Append the ServingConfig options to a command's own parameters."""
    signature = inspect.signature(function)
    own = [p for p in signature.parameters.values() if p.name != "options"]
    function.__signature__ = signature.replace(parameters=[*own, *_config_parameters()])
    return function


def register(app: typer.Typer) -> None:
    """Add `serve`, `loadtest` and `refresh-worker` to `app` (fxrec's CLI calls this)."""

    @app.command("serve")
    @_with_config_options
    def serve(
        run: Path = typer.Option(Path("runs/demo"), "--run", "-r", help="run directory"),
        vm: str = typer.Option(..., "--vm", help="the expert model to serve, e.g. vm_feed"),
        host: str = typer.Option(
            "127.0.0.1", "--host", help="bind address (no authentication: keep it on loopback)"
        ),
        port: int = typer.Option(8000, "--port"),
        log_level: str = typer.Option("info", "--log-level"),
        **options: Any,
    ) -> None:
        """Serve a VM over HTTP: POST /v1/score, GET /healthz, GET /metrics."""
        from fxrec.jobs.serve import RunError
        from fxrec.jobs.serve import serve as run_server

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            run_server(run, vm, _config(options), host=host, port=port, log_level=log_level)
        except (RunError, FileNotFoundError) as error:
            console.print(f"[red]error:[/] {error}")
            raise typer.Exit(code=2) from None

    @app.command("loadtest")
    def loadtest(
        run: Path = typer.Option(Path("runs/demo"), "--run", "-r", help="run directory"),
        vm: str = typer.Option(..., "--vm", help="the expert model to serve"),
        modes: str = typer.Option(
            "vm,async,inline", "--modes", help="configurations to compare, side by side"
        ),
        requests: int = typer.Option(2000, "--requests", help="at most this many requests per configuration"),
        seconds: float = typer.Option(40.0, "--seconds", help="at most this long per configuration"),
        rate: float = typer.Option(
            50.0, "--rate", help="offered requests per second (0: closed loop, as fast as possible)"
        ),
        rounds: int = typer.Option(5, "--rounds", help="interleaved turns per configuration"),
        concurrency: int = typer.Option(16, "--concurrency", help="most requests in flight"),
        candidates: int = typer.Option(100, "--candidates", help="candidates per request"),
        out: Path | None = typer.Option(None, "--out", help="write the results as JSON here"),
    ) -> None:
        """Load-test the VM alone, with SOAP async refresh, and with the FM inline, side by side."""
        from fxrec.jobs.loadtest import LoadSettings, compare_modes, print_results

        settings = LoadSettings(
            requests=requests,
            seconds=seconds,
            rate=rate,
            concurrency=concurrency,
            candidates=candidates,
            rounds=rounds,
        )
        results = compare_modes(run, vm, [m.strip() for m in modes.split(",") if m.strip()], settings)
        print_results(results)
        if out is not None:
            import json

            out.write_text(json.dumps(results, indent=2))

    @app.command("refresh-worker")
    def refresh_worker(
        run: Path = typer.Option(Path("runs/demo"), "--run", "-r", help="run directory"),
        store: str = typer.Option(..., "--store", help="user-embedding store, redis://host:port/db"),
        cache: str | None = typer.Option(None, "--cache", help="SOLARIS pair cache URI (default: --store)"),
        queue_url: str | None = typer.Option(
            None, "--queue-url", help="the refresh stream's Redis (default: --store)"
        ),
        fm: str | None = typer.Option(None, "--fm", help="the FM to run (default: the run's FM)"),
        pairs: bool = typer.Option(
            True, "--pairs/--no-pairs", help="also precompute SOLARIS pair embeddings"
        ),
        batch: int = typer.Option(32, "--batch", help="jobs per FM batch"),
        threads: int = typer.Option(1, "--threads", help="torch threads for the FM"),
        seconds: float | None = typer.Option(
            None, "--seconds", help="stop after this long (default: run until interrupted)"
        ),
    ) -> None:
        """Consume the Redis refresh stream: FM user embeddings and pair embeddings into the stores."""
        from fxrec.jobs.serve import start_worker

        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        processed = start_worker(
            run,
            store,
            (cache or store) if pairs else None,
            queue_url or store,
            fm_name=fm,
            batch=batch,
            seconds=seconds,
            threads=threads,
        )
        console.print(f"refresh worker processed {processed} jobs")
