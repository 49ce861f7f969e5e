"""`fxrec audience population | build | reach`: simulate a population, build a reach index from it (or
from an event log), and estimate a targeting query's reach in process or on Ray shards.

`build_index` reads the population three times, chunk by chunk (only the sample stays in memory):
pass 0 counts the users and keeps a uniform pilot (the "past log" the strata are learned on, with a
random past query workload), pass 1 counts the strata, pass 2 draws the stratified sample (Neyman
allocation blended with proportional, a minimum per stratum; fxrec.audience.build). The index folder
is written at the end, whole (fxrec.audience.stored_index): a bad input stops before anything is
written, and a build that fails midway leaves no half index.

`estimate_reach` checks the index and the query before it starts anything, then answers in process
or on `ShardedReachIndex` (S shards x R replicas; on a local Ray each actor reads its own shard file
when S is the index's shard count; otherwise, and on a cluster whose nodes may not see the folder,
the rows are split here and travel through Ray's object store).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.progress import track

from fxrec.audience.build import build_reach_index
from fxrec.audience.events import EventAudienceSpec, population_from_events
from fxrec.audience.population import (
    SCHEMA_FILE,
    PopulationConfig,
    read_population,
    write_population,
)
from fxrec.audience.query import parse
from fxrec.audience.reach import Estimate
from fxrec.audience.sample import BottomK, Census
from fxrec.audience.stored_index import CARD, load_index, save_index
from fxrec.audience.strata import Stratification
from fxrec.audience.workload import random_queries
from fxrec.errors import InputError

SHARDS = 4  # shard files an index is written in
PILOT = 20_000  # users of the pilot the strata are learned on
PAST_QUERIES = 200  # random past queries the strata are learned for
MINIMUM, MIN_SUPPORT = 5, 50  # sampled users at least per stratum; the fall-back's threshold
DEFAULT_RATE, DEFAULT_ROWS = 0.01, 2_000  # without --bytes: 1% of the users, at least 2,000 rows


def simulate_population(out: Path, users: int, seed: int = 11, chunk_size: int = 100_000) -> Path:
    """A simulated population (fxrec.audience.population) written under `out` as Parquet chunks."""
    if users < 1 or chunk_size < 1:
        raise InputError(f"--users and --chunk-size must be positive (got {users}, {chunk_size})")
    _check_out(out, marker=SCHEMA_FILE, what="a population")
    config = PopulationConfig(users=users, seed=seed, chunk_size=chunk_size)
    return write_population(config, out, lambda chunks, count: track(chunks, "writing the population", count))


def _passes(chunks, total: int | None):
    """`chunks` with a progress bar per pass over the population (pass 0: the pilot, 1: the strata and
    the census, 2: the sample)."""
    passes = itertools.count()
    return lambda: track(chunks(), description=f"reading the users, pass {next(passes)}", total=total)


def _check_out(out: Path, marker: str, what: str) -> None:
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise InputError(f"{out}: exists and is not {what}; choose an empty or new folder")


def _chunks(population: Path | None, events: Path | None, spec: Path | None):
    """(schema, a callable giving a fresh iterator of the chunks, what the source is)."""
    if (population is None) == (events is None):
        raise InputError("give one source: --population DIR (a simulated population) or --events DIR")
    if population is not None:
        if not (Path(population) / SCHEMA_FILE).is_file():
            raise InputError(
                f"{population}: not a population (no {SCHEMA_FILE}); write one with `fxrec audience population`"
            )
        if not any(Path(population).glob("part-*.parquet")):
            raise InputError(f"{population}: the population has no part-*.parquet chunks")
        schema, _ = read_population(population)
        return schema, lambda: read_population(population)[1], {"population": str(population)}
    audience_spec = EventAudienceSpec()
    if spec is not None:
        import yaml
        from pydantic import ValidationError

        from fxrec.errors import describe_validation

        try:
            audience_spec = EventAudienceSpec.model_validate(yaml.safe_load(Path(spec).read_text()) or {})
        except (OSError, yaml.YAMLError) as error:
            raise InputError(f"{spec}: cannot read the audience spec ({error})") from None
        except ValidationError as error:
            raise InputError(f"{spec}: {describe_validation(error, EventAudienceSpec)}") from None
    schema, columns = population_from_events(Path(events), audience_spec)
    return schema, lambda: iter([columns]), {"events": str(events)}


def build_index(
    out: Path,
    population: Path | None = None,
    events: Path | None = None,
    spec: Path | None = None,
    nbytes: int | None = None,
    shards: int = SHARDS,
    min_support: int = MIN_SUPPORT,
    seed: int = 0,
) -> dict:
    """Build a reach index under `out` from a population folder or an event log; returns its card."""
    if shards < 1:
        raise InputError(f"--shards must be at least 1 (got {shards})")
    if nbytes is not None and nbytes < 1:
        raise InputError(f"--bytes must be positive (got {nbytes})")
    _check_out(out, marker=CARD, what="a reach index")
    schema, chunks, source = _chunks(population, events, spec)
    parts = len(list(Path(population).glob("part-*.parquet"))) if population is not None else 1
    chunks = _passes(chunks, parts)
    started = time.perf_counter()
    # pass 0: how many users, and a uniform pilot (bottom-k on random keys)
    users = 0
    pilot = BottomK(
        Stratification(),
        Census(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros((1, len(schema.surfaces)), np.int64)),
        np.array([PILOT]),
        seed=seed + 1,
    )
    for chunk in chunks():
        users += len(chunk)
        pilot.add(chunk)
    if users == 0 or pilot.rows is None:
        raise InputError(f"{population or events}: no users")
    row_bytes = pilot.rows.take(np.arange(1)).nbytes() + 4  # a row and its stratum
    rows = max(DEFAULT_ROWS, int(DEFAULT_RATE * users)) if nbytes is None else max(1, nbytes // row_bytes)
    rows = min(rows, users)
    past = random_queries(schema, PAST_QUERIES, seed=seed + 2)
    index = build_reach_index(
        schema,
        chunks,
        pilot.rows,
        past,
        rows,
        MINIMUM,
        min_support,
        seed=seed,
        population=users,
        row_bytes=row_bytes if nbytes is not None else None,
    )
    card = {
        **source,
        "budget_rows": rows,
        "budget_bytes": nbytes,
        "min_support": min_support,
        "seed": seed,
        "built": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = save_index(staging, schema, index.sample, shards, card)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return written


@dataclass
class ReachAnswer:
    """An estimate with how it was made: which strata fell back (label, users N_h, sampled n_h)."""

    estimate: Estimate
    mode: str
    seconds: float
    undecided_strata: int
    fallback_strata: list[tuple[str, int, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            **self.estimate.to_dict(),
            "mode": self.mode,
            "seconds": self.seconds,
            "undecided_strata": self.undecided_strata,
            "fallback_strata": [
                {"stratum": label, "users": users, "sampled": sampled}
                for label, users, sampled in self.fallback_strata
            ],
        }


def estimate_reach(
    index: Path,
    expr: str,
    shards: int | None = None,
    replicas: int = 2,
    in_process: bool = False,
    address: str | None = None,
    num_cpus: int = 2,
) -> ReachAnswer:
    """The query's reach from the index at `index`: in process, or on Ray (`shards` x `replicas`
    actors; `shards` defaults to the index's shard files). The index and the query are checked first
    (InputError, QueryError) so a bad one starts no Ray."""
    stored = load_index(index)
    query = parse(expr, stored.schema)
    if not in_process and (replicas < 1 or (shards is not None and shards < 1)):
        raise InputError(f"--shards and --replicas must be at least 1 (got {shards}, {replicas})")
    estimator = stored.estimator(min_support=int(stored.card.get("min_support", MIN_SUPPORT)))
    detail: dict = {}
    if in_process:
        rows = stored.rows()
        started = time.perf_counter()
        estimate = estimator.answer(query, rows, detail)
        seconds, mode = time.perf_counter() - started, "in process"
    else:
        from fxrec.audience.shards import ShardedReachIndex, ShardFile

        count = shards or stored.shards
        sources = (
            [ShardFile(stored.path, s) for s in range(count)]
            if count == stored.shards and not address  # a cluster's nodes may not see the folder
            else stored.rows().split(count)
        )
        with ShardedReachIndex(estimator, sources, replicas, address=address, num_cpus=num_cpus) as sharded:
            started = time.perf_counter()
            estimate = estimator.answer(query, sharded, detail)
            seconds = time.perf_counter() - started
        mode = f"Ray, {count} shards x {replicas} replicas"
    fallback = [
        (estimator.stratum_label(h), int(stored.census.users[h]), int(stored.taken[h]))
        for h in detail.get("fallback_strata", [])
    ]
    return ReachAnswer(estimate, mode, seconds, detail.get("undecided_strata", 0), fallback)
