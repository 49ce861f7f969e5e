"""`fxrec audience serve`: the audience API (fxrec.serving.audience) over a reach index folder, in
process or on Ray shards, with an optional quality table.

The index and the quality file are read and checked before anything starts (InputError: exit code 2);
then the index is opened -- its rows in this process, or S shards x R replica actors on a local Ray
(or the cluster at `address`) -- and uvicorn serves until interrupted, when the actors are stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fxrec.audience.query import Query
from fxrec.audience.reach import Estimate, ReachEstimator
from fxrec.audience.schema import AudienceSchema
from fxrec.audience.statistics import SampleRows
from fxrec.audience.stored_index import load_index
from fxrec.errors import InputError
from fxrec.serving.audience import AudienceService, serve_audience
from fxrec.serving.audience_quality import QualityTable

MIN_SUPPORT = 50  # the fall-back's threshold when the index card does not say


@dataclass
class InProcessIndex:
    """An index folder's rows, all in this process, answering through its estimator."""

    estimator: ReachEstimator
    rows: SampleRows

    @property
    def schema(self) -> AudienceSchema:
        return self.estimator.schema

    def query(self, expr: str | Query, detail: dict | None = None) -> Estimate:
        return self.estimator.answer(expr, self.rows, detail)


@dataclass
class OpenIndex:
    """An opened index: what answers, what /healthz says about it, how to stop it."""

    index: object
    describe: Callable[[], dict]
    concurrent: bool  # may answer several queries at once
    close: Callable[[], None] = field(default=lambda: None)


def open_index(
    path: Path,
    in_process: bool = False,
    shards: int | None = None,
    replicas: int = 2,
    address: str | None = None,
    num_cpus: int = 2,
) -> OpenIndex:
    """Open the index folder at `path` for serving (see the module docstring)."""
    stored = load_index(path)
    estimator = stored.estimator(min_support=int(stored.card.get("min_support", MIN_SUPPORT)))
    card = {key: stored.card.get(key) for key in ("users", "rows", "strata", "bytes")}
    if in_process:
        rows = stored.rows()
        return OpenIndex(InProcessIndex(estimator, rows), lambda: {"kind": "in-process", **card}, False)
    if replicas < 1 or (shards is not None and shards < 1):
        raise InputError(f"--shards and --replicas must be at least 1 (got {shards}, {replicas})")
    from fxrec.audience.shards import ShardedReachIndex, ShardFile

    count = shards or stored.shards
    sources = (
        [ShardFile(stored.path, s) for s in range(count)]
        if count == stored.shards and not address  # a cluster's nodes may not see the folder
        else stored.rows().split(count)
    )
    sharded = ShardedReachIndex(estimator, sources, replicas, address=address, num_cpus=num_cpus)

    def describe() -> dict:
        return {"kind": "ray", "shards": count, "replicas": replicas, "live_replicas": sharded.live(), **card}

    return OpenIndex(sharded, describe, True, sharded.close)


def load_quality(path: Path | None) -> QualityTable | None:
    return None if path is None else QualityTable.load(path)


def audience_service(opened: OpenIndex, quality: QualityTable | None) -> AudienceService:
    return AudienceService(
        opened.index,  # type: ignore[arg-type]
        quality,
        describe=opened.describe,
        serialize=not opened.concurrent,
    )


def serve(
    index: Path,
    quality: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8001,
    in_process: bool = False,
    shards: int | None = None,
    replicas: int = 2,
    address: str | None = None,
    log_level: str = "info",
    max_body_bytes: int = 1 << 20,
) -> None:
    """Serve the audience API on `index` (and `quality`) until interrupted."""
    if max_body_bytes < 1024:
        raise InputError(f"--max-body-bytes must be at least 1024 (got {max_body_bytes})")
    table = load_quality(quality)  # a bad quality file stops before any Ray starts
    opened = open_index(index, in_process, shards, replicas, address)
    try:
        serve_audience(audience_service(opened, table), host, port, log_level, max_body_bytes)
    finally:
        opened.close()
