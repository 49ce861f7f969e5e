"""An exact census of who holds each targetable value, per cell of each stratum dimension.

fxrec's reach index keeps, next to its sample, a small census counted in the same pass over the log as
the strata (pass 1): for every *family* of query leaves (each categorical field's values, each age in
years, each interest segment) the users holding the value, per cell of each stratum dimension, plus
one row for everyone (the one-way margin). A query leaf (`country:HU`, `age in 25..34`,
`interest:pets`) then has exact totals along every dimension of the strata. Two uses
(fxrec.audience.reach):

- calibration (fxrec.audience.calibration): the sample's weights are raked once at build time so the
  weighted sample reproduces the one-way margins exactly (and each stratum's N_h);
- the fuzzy fall-back's synthetic rates: a leaf's rate in each stratum is raked from the census
  (`leaf_rates`) so that its strata add up to the known total of every dimension cell, instead of the
  main-effects rates of the ~10 sample rows a thin query reaches.

The counts add up over chunks and over shards of the log; the census is replicated with the strata
(it is part of the estimator, not of the rows). `nbytes` counts it (int32 cells): it is part of
fxrec's memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fxrec.audience.query import Categorical, Node, Numeric, Segment
from fxrec.audience.schema import AudienceSchema, Columns
from fxrec.audience.strata import AGE_BANDS, Dimension, Stratification

Family = tuple[str, str]  # ("categorical", field) | ("numeric", field) | ("segment", namespace)


def unpack_segments(bits: np.ndarray, count: int) -> np.ndarray:
    """[n, words] uint64 bitsets as [n, count] uint8 flags (bit j = segment j)."""
    flat = np.ascontiguousarray(bits).view(np.uint8)
    return np.unpackbits(flat, axis=1, bitorder="little")[:, :count]


@dataclass
class Margins:
    """`tables[family]`: users [rows, values]; row 0 is everyone, then each stratum dimension's cells
    in order (`offsets[d]` the first row of dimension d), then each context partition's cells
    (`contexts`: age band, every country; not strata, but a thin `and` of two leaves takes them as
    independent given the context cell: fxrec.audience.reach)."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    tables: dict[Family, np.ndarray]
    lows: dict[str, int] = field(default_factory=dict)  # numeric families: the value of column 0
    contexts: tuple[tuple[int, int], ...] = ()  # (first row, cells) of each context partition

    def everyone(self) -> np.ndarray:
        """Users per row of the tables."""
        for (kind, _), table in self.tables.items():
            if kind == "categorical":
                return table.sum(1)
        raise ValueError("the census needs a categorical field to know each row's users")

    def nbytes(self) -> int:
        return int(sum(t.nbytes for t in self.tables.values()))

    def leaf_counts(self, leaf: Node) -> np.ndarray | None:
        """The users the leaf holds for, per row of the tables (None: not a leaf the census counts)."""
        if isinstance(leaf, Categorical) and ("categorical", leaf.field) in self.tables:
            table = self.tables[("categorical", leaf.field)]
            return table[:, sorted(c for c in leaf.codes if c < table.shape[1])].sum(1)
        if isinstance(leaf, Numeric) and ("numeric", leaf.field) in self.tables:
            table, low = self.tables[("numeric", leaf.field)], self.lows[leaf.field]
            a, b = max(leaf.low - low, 0), min(leaf.high - low, table.shape[1] - 1)
            return table[:, a : b + 1].sum(1) if a <= b else np.zeros(len(table), dtype=np.int64)
        if isinstance(leaf, Segment) and ("segment", leaf.namespace) in self.tables:
            return self.tables[("segment", leaf.namespace)][:, leaf.index]
        return None


class MarginCounter:
    """Accumulates `Margins` chunk by chunk (pass 1, next to the strata census). `namespaces`: the
    segment namespaces counted (default: the first, the one advertisers target)."""

    def __init__(
        self,
        schema: AudienceSchema,
        strata: Stratification,
        namespaces: tuple[str, ...] | None = None,
        contexts: tuple[Dimension, ...] | None = None,
    ):
        self.schema, self.strata = schema, strata
        self.context_dimensions = context_dimensions(schema) if contexts is None else contexts
        sizes = tuple(d.size for d in strata.dimensions)
        self.offsets = tuple(int(o) for o in 1 + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int))
        self.sizes = sizes
        first, found = 1 + int(sum(sizes)), []
        for dimension in self.context_dimensions:
            found.append((first, dimension.size))
            first += dimension.size
        self.contexts = tuple(found)
        self.rows = first
        self.namespaces = tuple(list(schema.segments)[:1]) if namespaces is None else namespaces
        self.families: dict[Family, int] = {("categorical", f): len(v) for f, v in schema.categorical.items()}
        self.lows = {f: int(low) for f, (low, _) in schema.numeric.items()}
        for f, (low, high) in schema.numeric.items():
            self.families[("numeric", f)] = int(high - low + 1)
        for namespace in self.namespaces:
            self.families[("segment", namespace)] = len(schema.segments[namespace])
        self.tables = {
            family: np.zeros((self.rows, k), dtype=np.int64) for family, k in self.families.items()
        }

    def add(self, chunk: Columns) -> None:
        n = len(chunk)
        cells = [np.zeros(n, dtype=np.int64)]  # row 0: everyone
        for d, dimension in enumerate(self.strata.dimensions):
            cells.append(self.offsets[d] + dimension.coordinate(chunk))
        for (offset, _), dimension in zip(self.contexts, self.context_dimensions, strict=True):
            cells.append(offset + dimension.coordinate(chunk))
        for family, k in self.families.items():
            kind, name = family
            if kind == "segment":
                flags = unpack_segments(chunk.segments[name], k).astype(np.float64)
                in_cell = np.zeros((n, self.rows))  # each user: 1 in its cell of every dimension
                for row in cells:
                    in_cell[np.arange(n), row] = 1.0
                self.tables[family] += np.rint(in_cell.T @ flags).astype(np.int64)
                continue
            values = (
                chunk.categorical[name].astype(np.int64)
                if kind == "categorical"
                else chunk.numeric[name].astype(np.int64) - self.lows[name]
            )
            for row in cells:
                self.tables[family] += np.bincount(row * k + values, minlength=self.rows * k).reshape(
                    self.rows, k
                )

    def result(self) -> Margins:
        return Margins(
            self.offsets,
            self.sizes,
            {f: t.astype(np.int32) for f, t in self.tables.items()},
            dict(self.lows),
            self.contexts,
        )


def context_dimensions(schema: AudienceSchema) -> tuple[Dimension, ...]:
    """The context partitions counted besides the strata: advertiser age bands and every country
    (what interests lean by, and what a region lies in)."""
    found = []
    if "age" in schema.numeric:
        found.append(Dimension("age band", "band", "age", AGE_BANDS))
    if "country" in schema.categorical:
        values = schema.categorical["country"]
        found.append(
            Dimension("country", "categorical", "country", tuple(frozenset({v}) for v in range(len(values))))
        )
    return tuple(found)


def pair_count(margins: Margins, a: np.ndarray, b: np.ndarray) -> float | None:
    """Users two leaves both hold for (`a`, `b`: `Margins.leaf_counts`), taken as independent given the
    cell of the context partition where either leaf is the most concentrated (a region: its country;
    an age range: its bands). None without contexts."""
    if not margins.contexts:
        return None
    everyone = margins.everyone().astype(np.float64)
    best, found = np.inf, None
    for offset, size in margins.contexts:
        users = everyone[offset : offset + size]
        ta, tb = (x[offset : offset + size].astype(np.float64) for x in (a, b))
        spread = min(_entropy(ta), _entropy(tb))
        if spread < best:
            best = spread
            found = float((ta * tb / np.maximum(users, 1.0))[users > 0].sum())
    return found


def _entropy(counts: np.ndarray) -> float:
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def leaf_rates(
    margins: Margins, counts: np.ndarray, coordinates: np.ndarray, users: np.ndarray, sweeps: int = 30
) -> np.ndarray:
    """Per stratum, the share of its users a leaf holds for, raked to the census: start from the leaf's
    overall share, then scale, dimension after dimension, so the strata of each cell add up to the
    cell's count (`counts`: `Margins.leaf_counts`). A synthetic estimate: exact on every dimension's
    cells, interactions between dimensions taken from nowhere (none)."""
    users = users.astype(np.float64)
    total = float(users.sum())
    expected = users * (float(counts[0]) / max(total, 1.0))
    for _ in range(sweeps):
        worst = 0.0
        for d, (offset, size) in enumerate(zip(margins.offsets, margins.sizes, strict=True)):
            cell = coordinates[:, d]
            have = np.bincount(cell, weights=expected, minlength=size)
            want = counts[offset : offset + size].astype(np.float64)
            scale = np.where(have > 0, want / np.maximum(have, 1e-300), 1.0)
            worst = max(worst, float(np.abs(have - want).max(initial=0.0)))
            expected = expected * scale[cell]
        if worst < 1e-6:
            break
    return (expected / np.maximum(users, 1.0)).clip(0.0, 1.0)


__all__ = ["Margins", "MarginCounter", "context_dimensions", "leaf_rates", "pair_count", "unpack_segments"]
