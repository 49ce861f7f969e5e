"""A reach index on disk: what `fxrec audience build` writes and `fxrec audience reach` reads.

One folder:

- `card.json`: what the index is (users, sample rows and bytes, strata, shards, the fall-back's
  settings, where the population came from);
- `schema.yaml`: the targetable fields (fxrec.audience.schema.AudienceSchema);
- `strata.json`: the stratification's dimensions and their cells;
- `census.npz`: per stratum, its key, users N_h, impressions per surface and sampled rows n_h;
- `margins.npz` (when the index keeps one): the census of margins per stratum dimension cell
  (fxrec.audience.margins), which the fall-back's synthetic rates are raked to;
- `shard-00000.parquet`, ...: the sample's rows split into shards (row r in shard r mod S), each row
  with its stratum (an index into the census) and weight (N_h / n_h, or calibrated to the margins),
  so a shard alone is enough for a Ray actor to answer for its rows (`load_shard`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fxrec.audience.margins import Margins
from fxrec.audience.reach import ReachEstimator
from fxrec.audience.sample import Census, StratifiedSample
from fxrec.audience.schema import AudienceSchema, Columns
from fxrec.audience.statistics import SampleRows
from fxrec.audience.strata import Dimension, Stratification
from fxrec.errors import InputError

CARD, SCHEMA, STRATA, CENSUS = "card.json", "schema.yaml", "strata.json", "census.npz"
MARGINS = "margins.npz"
FORMAT = "fxrec reach index"
STRATUM, WEIGHT = "__stratum", "__weight"


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _cells(dimension: Dimension) -> list:
    if dimension.kind == "categorical":
        return [sorted(int(code) for code in cell) for cell in dimension.cells]
    if dimension.kind in ("band", "tier", "segment count"):
        return [[int(low), int(high)] for low, high in dimension.cells]
    return [int(cell) for cell in dimension.cells]


def strata_to_json(strata: Stratification) -> list[dict]:
    return [{"name": d.name, "kind": d.kind, "field": d.field, "cells": _cells(d)} for d in strata.dimensions]


def strata_from_json(data: list[dict]) -> Stratification:
    dimensions = []
    for item in data:
        kind = item["kind"]
        if kind == "categorical":
            cells = tuple(frozenset(cell) for cell in item["cells"])
        elif kind in ("band", "tier", "segment count"):
            cells = tuple((low, high) for low, high in item["cells"])
        else:
            cells = tuple(item["cells"])
        dimensions.append(Dimension(item["name"], kind, item["field"], cells))
    return Stratification(tuple(dimensions))


def save_index(
    out: Path, schema: AudienceSchema, sample: StratifiedSample, shards: int, card: dict | None = None
) -> dict:
    """Write the index under `out` (created); returns the card written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    estimator = ReachEstimator.of(schema, sample)
    rows = estimator.sample_rows(sample)
    schema.save(out / SCHEMA)
    (out / STRATA).write_text(json.dumps(strata_to_json(sample.strata), indent=1))
    census = sample.census
    np.savez(
        out / CENSUS, keys=census.keys, users=census.users, impressions=census.impressions, taken=sample.taken
    )
    if sample.margins is not None:
        save_margins(out / MARGINS, sample.margins)
    for s, part in enumerate(rows.split(shards)):
        table = part.rows.to_arrow(schema)
        table = table.append_column(STRATUM, pa.array(part.row_stratum.astype(np.int32)))
        table = table.append_column(WEIGHT, pa.array(part.weights))
        pq.write_table(table, out / shard_file(s))
    written = {
        "format": FORMAT,
        "version": 1,
        "users": int(census.users.sum()),
        "impressions": int(census.impressions.sum()),
        "rows": len(rows),
        "bytes": int(sample.nbytes()),
        "strata": len(census.keys),
        "dimensions": sample.strata.describe(),
        "shards": shards,
        "surfaces": list(schema.surfaces),
        **(card or {}),
    }
    (out / CARD).write_text(json.dumps(written, indent=1) + "\n")
    return written


@dataclass
class StoredIndex:
    """An index folder, read: its card, schema, strata, census and allocation; the rows stay in the
    shard files until `rows()` or `load_shard` reads them."""

    path: Path
    card: dict
    schema: AudienceSchema
    strata: Stratification
    census: Census
    taken: np.ndarray
    margins: Margins | None = None

    @property
    def shards(self) -> int:
        return int(self.card["shards"])

    def estimator(self, **options) -> ReachEstimator:
        return ReachEstimator(
            self.schema, self.strata, self.census, self.taken, margins=self.margins, **options
        )

    def shard(self, index: int) -> SampleRows:
        table = pq.read_table(self.path / shard_file(index))
        stratum = table.column(STRATUM).to_numpy().astype(np.int32)
        weights = table.column(WEIGHT).to_numpy().astype(float)
        columns = Columns.from_arrow(table.drop_columns([STRATUM, WEIGHT]), self.schema)
        coordinates = self.strata.coordinates(self.census.keys)
        return SampleRows(
            columns,
            stratum,
            weights,
            coordinates[stratum],
            len(self.census.keys),
            tuple(d.size for d in self.strata.dimensions),
        )

    def rows(self) -> SampleRows:
        """Every shard's rows, in one SampleRows (the whole sample)."""
        parts = [self.shard(s) for s in range(self.shards)]
        first = parts[0]
        return SampleRows(
            Columns.concat([p.rows for p in parts]),
            np.concatenate([p.row_stratum for p in parts]),
            np.concatenate([p.weights for p in parts]),
            np.concatenate([p.row_cells for p in parts]),
            first.strata,
            first.cell_sizes,
        )


def load_index(path: Path) -> StoredIndex:
    """Read an index folder; InputError when it is missing or not an index."""
    path = Path(path)
    if not (path / CARD).is_file():
        raise InputError(f"{path}: not a reach index (no {CARD}); write one with `fxrec audience build`")
    try:
        card = json.loads((path / CARD).read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path / CARD}: not JSON ({error})") from None
    if card.get("format") != FORMAT:
        raise InputError(f"{path / CARD}: not a reach index card (format {card.get('format')!r})")
    missing = [
        name
        for name in (SCHEMA, STRATA, CENSUS, *(shard_file(s) for s in range(int(card.get("shards", 0)))))
        if not (path / name).is_file()
    ]
    if missing:
        raise InputError(f"{path}: the reach index lacks {', '.join(missing)}")
    schema = AudienceSchema.load(path / SCHEMA)
    strata = strata_from_json(json.loads((path / STRATA).read_text()))
    with np.load(path / CENSUS) as data:
        census = Census(data["keys"], data["users"], data["impressions"])
        taken = data["taken"]
    margins = load_margins(path / MARGINS) if (path / MARGINS).is_file() else None
    return StoredIndex(path, card, schema, strata, census, taken, margins)


def save_margins(path: Path, margins: Margins) -> None:
    tables = {f"{kind}:{name}": table for (kind, name), table in margins.tables.items()}
    np.savez(
        path,
        __offsets=np.array(margins.offsets, dtype=np.int64),
        __sizes=np.array(margins.sizes, dtype=np.int64),
        __lows=np.array(json.dumps(margins.lows)),
        __contexts=np.array(margins.contexts, dtype=np.int64).reshape(-1, 2),
        **tables,
    )


def load_margins(path: Path) -> Margins:
    with np.load(path) as data:
        tables = {tuple(key.split(":", 1)): data[key] for key in data.files if not key.startswith("__")}
        return Margins(
            tuple(int(o) for o in data["__offsets"]),
            tuple(int(s) for s in data["__sizes"]),
            tables,
            {k: int(v) for k, v in json.loads(str(data["__lows"])).items()},
            tuple((int(o), int(n)) for o, n in data["__contexts"]) if "__contexts" in data.files else (),
        )


def load_shard(path: Path, index: int) -> SampleRows:
    """One shard's rows from an index folder: what a Ray shard actor loads (fxrec.audience.shards)."""
    return load_index(path).shard(index)
