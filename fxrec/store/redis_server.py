"""RedisServer: a throwaway, real `redis-server` on a free loopback port, for tests, demos and fault drills.

Tests and the serving load / fault tests need the real thing (pipelining, MULTI/EXEC, what a dead
socket looks like), not a fake. The server keeps nothing on disk (`--save ""`, `--appendonly no`),
lives in a temp dir, and can be stopped and started again on the same port to rehearse an outage.

    with RedisServer() as server:
        store = RedisStore(server.url, dim=64)
        server.stop()   # store.get(...) now raises StoreUnavailable
        server.start()  # and works again
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_SERVER_ENV = "FXREC_REDIS_SERVER"


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up."""


def find_redis_server(binary: str | None = None) -> str | None:
    """Path of the redis-server binary: `binary` if given (no fallback), else $FXREC_REDIS_SERVER, PATH,
    /usr/bin; None when absent."""
    candidates = [binary] if binary else [os.environ.get(REDIS_SERVER_ENV), "redis-server", "/usr/bin/redis-server"]
    for candidate in candidates:
        if candidate:
            found = shutil.which(candidate)
            if found:
                return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server child process bound to 127.0.0.1 on one port for its whole life."""

    def __init__(self, port: int | None = None, binary: str | None = None, startup_timeout_s: float = 10.0):
        found = find_redis_server(binary)
        if found is None:
            where = repr(binary) if binary else "$FXREC_REDIS_SERVER, PATH and /usr/bin/redis-server"
            raise RedisServerError(
                f"redis-server not found (looked at {where}); install it (e.g. `apt-get install redis-server`) "
                f"or point ${REDIS_SERVER_ENV} at the binary"
            )
        self.binary = found
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self._dir = Path(tempfile.mkdtemp(prefix="fxrec-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers PING."""
        if self.running:
            return
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self._dir), "--daemonize", "no", "--loglevel", "warning", "--logfile", "",
        ]
        with open(self._dir / "redis.log", "ab") as log:  # the child keeps its own copy of the handle
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if _ping(self.port):
                return
            time.sleep(0.01)
        tail = (self._dir / "redis.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RedisServerError(f"redis-server on port {self.port} did not answer PING within {self.startup_timeout_s}s; log:\n{tail}")

    def stop(self) -> None:
        """Stop the server (its data is gone: there is no persistence)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_process", None) is not None:
            self.stop()
