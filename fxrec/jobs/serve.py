"""`fxrec serve` and `fxrec refresh-worker`: a scoring server for a VM of a run, and FM refresh workers
fed by a Redis Stream. `ServingConfig` holds every option of the server."""

from __future__ import annotations

from fxrec.run import RunError
from fxrec.serving.server import serve
from fxrec.serving.service import ServingConfig
from fxrec.serving.worker import start_worker

__all__ = ["RunError", "ServingConfig", "serve", "start_worker"]
