"""Candidate logs: every eligible ad of a sample of requests, with the final stage's inputs.

The impression log holds only what won an auction, so it cannot tell how much a retrieval or an
early-stage ranker (ESR) lost. A candidate log can: for a sampled request (`event_id`, the id of the
impression it produced) it lists every ad that was eligible for it, with what the final stage's
value formula reads (`bid`) and, from the simulator, the true probabilities behind that formula
(`oracle_p_click`, `oracle_p_conversion`, `oracle_p_hide`). Oracle columns are for evaluating a stage
(how much of the final stage's value it keeps), never features: no fxrec model reads this log.

Layout, next to the impression log it belongs to::

    events/
      spec.yaml, day=.../              the impression log (fxrec.data.eventlog)
      candidates/
        candidates.yaml                CandidateSpec
        day=2026-01-01/part-0.parquet  rows sorted by (ts, event_id, item_id)

A table import can bring a real system's candidate log: `write_candidates` checks it against
`CandidateSpec` (required columns and types; oracle columns are optional).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict

from fxrec.data.eventlog import EventLogError, day_of
from fxrec.errors import InputError

CANDIDATES_DIR = "candidates"
CANDIDATE_SPEC_FILE = "candidates.yaml"

# What every candidate log holds: the request (the impression it produced), the ad, the final stage's inputs.
KEY_COLUMNS = {"event_id": pa.int64(), "ts": pa.int64(), "user_id": pa.int64(), "item_id": pa.int64()}
INPUT_COLUMNS = {
    "advertiser_id": pa.int64(),
    "ad_format": pa.int64(),
    "ad_category": pa.int64(),
    "ad_age_days": pa.float32(),
    "bid": pa.float32(),
    "auctioned": pa.bool_(),  # the ad took part in the request's auction (the final stage scored it)
    "won": pa.bool_(),  # the ad is the request's impression
}
# The ground truth behind the value formula bid x pCTR x pCVR - quality penalty: evaluation only.
ORACLE_COLUMNS = {
    "oracle_p_click": pa.float32(),
    "oracle_p_conversion": pa.float32(),
    "oracle_p_hide": pa.float32(),
}


class CandidateSpec(BaseModel):
    """What a candidate log holds (`candidates.yaml`): its source and which oracle columns it has."""

    model_config = ConfigDict(extra="forbid")

    source: str = "simulator"
    sample_rate: float | None = None  # share of requests logged, where known
    oracle: list[str] = list(ORACLE_COLUMNS)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.model_dump(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> CandidateSpec:
        return cls.model_validate(yaml.safe_load(path.read_text()))


def candidates_dir(events: Path | str) -> Path:
    """Where the candidate log of the impression log at `events` lives."""
    return Path(events) / CANDIDATES_DIR


def validate_candidates(table: pa.Table, spec: CandidateSpec, source: str) -> pa.Table:
    """Cast a candidate table to its schema; raise InputError naming the source and column."""
    expected = {**KEY_COLUMNS, **INPUT_COLUMNS, **{name: ORACLE_COLUMNS[name] for name in spec.oracle}}
    unknown_oracle = set(spec.oracle) - set(ORACLE_COLUMNS)
    if unknown_oracle:
        raise InputError(
            f"{source}: unknown oracle columns {sorted(unknown_oracle)}; expected some of {list(ORACLE_COLUMNS)}"
        )
    columns = {}
    for name, target in expected.items():
        if name not in table.column_names:
            raise EventLogError(
                f"{source}: missing column {name!r} (expected {target}); found columns {table.column_names}"
            )
        column = table.column(name)
        if column.null_count:
            raise EventLogError(
                f"{source}: column {name!r} has {column.null_count} null values; expected none"
            )
        try:
            columns[name] = column.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise EventLogError(
                f"{source}: column {name!r} has type {column.type}, expected {target} ({error})"
            ) from None
    return pa.table(columns)


def write_candidates(
    table: pa.Table, events: Path | str, spec: CandidateSpec, source: str = "candidates"
) -> Path:
    """Validate, sort by (ts, event_id, item_id), partition by day and write atomically next to the
    impression log at `events`; returns the candidate log's directory."""
    out = candidates_dir(events)
    table = validate_candidates(table, spec, source)
    table = table.sort_by([("ts", "ascending"), ("event_id", "ascending"), ("item_id", "ascending")])
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        days = day_of(table.column("ts").to_numpy()) if table.num_rows else np.array([], dtype=str)
        boundaries = np.flatnonzero(days[1:] != days[:-1]) + 1 if len(days) else np.array([], dtype=int)
        starts = np.concatenate([[0], boundaries]) if len(days) else []
        ends = np.concatenate([boundaries, [len(days)]]) if len(days) else []
        for start, end in zip(starts, ends, strict=True):
            folder = tmp / f"day={days[start]}"
            folder.mkdir()
            pq.write_table(table.slice(start, end - start), folder / "part-0.parquet", row_group_size=65536)
        spec.save(tmp / CANDIDATE_SPEC_FILE)
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class CandidateLog:
    """A day-partitioned candidate log on disk (`events/candidates/`)."""

    def __init__(self, events: Path | str):
        self.path = candidates_dir(events)
        spec_path = self.path / CANDIDATE_SPEC_FILE
        if not spec_path.exists():
            raise EventLogError(
                f"{self.path}: no candidate log (no {CANDIDATE_SPEC_FILE}); simulate with `candidate_log_rate` > 0"
            )
        self.spec = CandidateSpec.load(spec_path)
        self.days: list[str] = sorted(
            p.name.removeprefix("day=") for p in self.path.glob("day=*") if p.is_dir()
        )

    def read_day(self, day: str, columns: list[str] | None = None) -> pa.Table:
        files = sorted((self.path / f"day={day}").glob("*.parquet"))
        if not files:
            return _empty(self.spec, columns)
        return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])

    def requests(self, day: str) -> np.ndarray:
        """The sampled requests (event ids) of `day`."""
        return pc.unique(self.read_day(day, ["event_id"]).column("event_id")).to_numpy()


def _empty(spec: CandidateSpec, columns: list[str] | None) -> pa.Table:
    schema = {**KEY_COLUMNS, **INPUT_COLUMNS, **{name: ORACLE_COLUMNS[name] for name in spec.oracle}}
    return pa.table(
        {name: pa.array([], type) for name, type in schema.items() if columns is None or name in columns}
    )
