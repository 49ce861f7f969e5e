"""A store on the request path, guarded: a store fault costs one slow read, then none, until it heals.

Redis can go away mid-traffic. A read against a dead Redis raises `StoreUnavailable` after a short
timeout; paying that on every request would turn an outage into a latency incident. `GuardedStore`
is a circuit breaker: after a failure it stops calling the store (reads come back "not found" at
once) and a background probe retries every `probe_every` seconds; the first successful probe
closes the breaker, so service recovers within about one probe interval of the store's return.

It also keeps the last value it read per key in a bounded LRU copy: while the store is down, a user
seen recently still gets their (now "stale") embedding rather than none.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from fxrec.store.base import EmbeddingStore, StoreRead

log = logging.getLogger(__name__)


def empty_read(n: int, dim: int) -> StoreRead:
    return StoreRead(
        np.zeros((n, dim), np.float32), np.zeros(n, bool), np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    )


class GuardedStore:
    """Wraps an EmbeddingStore for the request path (see module docstring).

    `read` never raises for a store fault; it returns (StoreRead, from_local_copy (n,) bool).
    """

    def __init__(
        self,
        store: EmbeddingStore,
        name: str,
        probe_every: float = 0.25,
        local_copy: int = 50_000,
        on_state: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.name = name
        self.dim = store.dim
        self.probe_every = probe_every
        self.local_capacity = local_copy
        self._local: OrderedDict[bytes, tuple[np.ndarray, int, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._available = True
        self._probe_thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._on_state = on_state or (lambda name, up: None)
        self.failures = 0
        self.clock = clock  # the time TTLs are judged by (the serving event clock)

    @property
    def available(self) -> bool:
        return self._available

    def read(
        self, keys: np.ndarray, stabilize_k: int = 1, remember: bool = True
    ) -> tuple[StoreRead, np.ndarray]:
        """`remember=False` for bulk background reads, which must not churn the request path's copy."""
        n = len(keys)
        if self._available:
            try:
                now = int(self.clock())
                result = (
                    self.store.get_stabilized(keys, stabilize_k, now=now)
                    if stabilize_k > 1
                    else self.store.get(keys, now=now)
                )
                if remember:
                    self._remember(keys, result)
                return result, np.zeros(n, bool)
            except Exception as error:  # any store fault degrades the request, never fails it
                self._trip(error)
        return self._from_local(keys)

    def write(self, keys: np.ndarray, vectors: np.ndarray, version: int) -> bool:
        """Background writers use this (written now, by the clock): False when the store is down."""
        if not self._available:
            return False
        try:
            self.store.put(keys, vectors, version, int(self.clock()))
            return True
        except Exception as error:
            self._trip(error)
            return False

    def close(self) -> None:
        self._closed.set()
        if self._probe_thread is not None:
            self._probe_thread.join(timeout=2)
        try:
            self.store.close()
        except Exception:  # closing a store whose server is gone must not fail shutdown
            log.debug("closing %s failed", self.name, exc_info=True)

    # -- breaker --------------------------------------------------------------------------------
    def _trip(self, error: Exception) -> None:
        with self._lock:
            self.failures += 1
            if not self._available:
                return
            self._available = False
            log.warning("store %s unavailable (%s); serving fallbacks until it is back", self.name, error)
            self._on_state(self.name, False)
            if self._probe_thread is None or not self._probe_thread.is_alive():
                self._probe_thread = threading.Thread(
                    target=self._probe, name=f"probe-{self.name}", daemon=True
                )
                self._probe_thread.start()

    def _probe(self) -> None:
        probe_key = np.zeros(1, np.int64)
        while not self._closed.wait(self.probe_every):
            try:
                self.store.get(probe_key)
            except Exception:
                continue
            with self._lock:
                self._available = True
            log.warning("store %s is back", self.name)
            self._on_state(self.name, True)
            return

    # -- local copy -----------------------------------------------------------------------------
    def _remember(self, keys: np.ndarray, result: StoreRead) -> None:
        if self.local_capacity <= 0 or not result.found.any():
            return
        with self._lock:
            for i in np.flatnonzero(result.found):
                key = keys[i].tobytes()
                self._local[key] = (result.vectors[i].copy(), int(result.version[i]), int(result.ts[i]))
                self._local.move_to_end(key)
            while len(self._local) > self.local_capacity:
                self._local.popitem(last=False)

    def _from_local(self, keys: np.ndarray) -> tuple[StoreRead, np.ndarray]:
        result = empty_read(len(keys), self.dim)
        with self._lock:
            for i, key in enumerate(keys):
                hit = self._local.get(key.tobytes())
                if hit is not None:
                    result.vectors[i], result.version[i], result.ts[i] = hit
                    result.found[i] = True
        return result, result.found.copy()


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()
