"""Ray for fxrec's jobs that run on a cluster (`fxrec publish --engine ray`, the audience shards).

One way to start or join Ray: `start_ray(address, num_cpus)` joins the cluster at `address` (`ray start
--head` prints it; `auto` finds a local one) after checking that something answers there (Ray itself
retries for minutes), or starts a local Ray with `num_cpus` CPUs and no dashboard. An already
initialised Ray (a caller's own session) is used as it is. `ray_session` wraps it for one job and
shuts down only the Ray it started. Ray is the `ray` extra: a missing install is an InputError naming it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from fxrec.errors import InputError


def import_ray(purpose: str, data: bool = False):
    """The `ray` module (and `ray.data` with `data`), or an InputError saying `purpose` needs it."""
    try:
        import ray

        if data:
            import ray.data  # noqa: F401
    except ImportError as error:
        raise InputError(f"{purpose} needs Ray{' Data' if data else ''}: pip install 'fxrec[ray]'") from error
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """InputError at once for an address no cluster answers at."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"bad Ray address {address!r}: write host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise InputError(f"cannot join the Ray cluster at {address}: nothing answers ({error})") from error


def start_ray(address: str | None = None, num_cpus: int = 2, purpose: str = "this command") -> bool:
    """Start or join Ray; True when this call started it (and the caller should shut it down)."""
    ray = import_ray(purpose)
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as error:
        ray.shutdown()
        raise InputError(f"cannot start or join Ray at {address or 'a local instance'}: {error}") from error
    return True


@contextmanager
def ray_session(
    address: str | None = None, num_cpus: int = 2, purpose: str = "this command"
) -> Iterator[None]:
    """Ray for one job (`start_ray`), shut down on the way out if this session started it."""
    started = start_ray(address, num_cpus, purpose)
    try:
        yield
    finally:
        if started:
            import_ray(purpose).shutdown()


__all__ = ["check_reachable", "import_ray", "ray_session", "start_ray"]
