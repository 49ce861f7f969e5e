"""Running the app: in the foreground (`fxrec serve`), in a thread (tests, the demo) or in a child
process (the load test, so the load generator does not share the server's interpreter).

The server binds 127.0.0.1 unless told otherwise: it has no authentication.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from starlette.types import ASGIApp

from fxrec.serving.app import create_app
from fxrec.serving.service import Service, ServingConfig

DEFAULT_HOST = "127.0.0.1"


def _uvicorn_config(app, host: str, port: int, log_level: str) -> uvicorn.Config:
    # One worker process and the default asyncio loop: scoring runs on its own thread and the
    # refresh in child processes; more server processes would each load the models and the catalog.
    # Keep-alive outlasts uvicorn's 5 s default so a client pausing between bursts does not race a close.
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on", timeout_keep_alive=30
    )


def serve(
    run: Path,
    vm: str,
    config: ServingConfig,
    host: str = DEFAULT_HOST,
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Serve until interrupted."""
    service = Service(run, vm, config)
    uvicorn.Server(_uvicorn_config(create_app(service, config.max_body_bytes), host, port, log_level)).run()


class BackgroundServer:
    """A live server on a loopback port, in a daemon thread of this process (`app`: another fxrec
    API to serve instead of the scoring one, e.g. the audience API).

    with BackgroundServer(Service(run, "vm_feed")) as server:
        httpx.post(server.url + "/v1/score", json=...)
    """

    def __init__(
        self,
        service: Service,
        host: str = DEFAULT_HOST,
        port: int = 0,
        startup_timeout: float = 60.0,
        app: ASGIApp | None = None,
    ):
        self.service = service
        self.app = app if app is not None else create_app(service, service.config.max_body_bytes)
        self._server = uvicorn.Server(_uvicorn_config(self.app, host, port, "warning"))
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
        self._thread = threading.Thread(target=self._server.run, name="fxrec-server", daemon=True)
        self.host = host
        self.startup_timeout = startup_timeout
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the scoring server did not start (see the log above)")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess:
    """`python -m fxrec.serving --run ... --vm ...` as a child process on a free loopback port."""

    def __init__(
        self,
        run: Path,
        vm: str,
        config: ServingConfig,
        port: int | None = None,
        startup_timeout: float = 120.0,
    ):
        from fxrec.store.redis_server import free_port

        self.port = port or free_port()
        self.url = f"http://{DEFAULT_HOST}:{self.port}"
        args = [
            sys.executable,
            "-m",
            "fxrec.serving",
            "--run",
            str(run),
            "--vm",
            vm,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--config",
            config.model_dump_json(exclude_defaults=True),
        ]
        self.args = args
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.args, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the scoring server exited with code {self.process.returncode}: {' '.join(self.args)}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the scoring server did not answer /healthz within {self.startup_timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
