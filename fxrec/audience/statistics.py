"""The partial sufficient statistics of reach estimation: what a set of sample rows tells about a query,
as sums that add up over any split of the rows.

fxrec's reach estimator (fxrec.audience.reach) needs nothing from the sample rows but sums: per
stratum, the weighted sum and sum of squares of each target y (reached users, reached impressions); per
fall-back node, the weighted sums of its reached rows overall and per cell of each dimension, and how
many rows it reaches. `SampleRows` computes them over the rows it holds, the whole sample in
process or one shard of it on a Ray actor (fxrec.audience.shards); the estimator adds the shards'
sums (`add`) and takes its estimates from the totals, so a sharded answer is the in-process one up to
the order of float additions.

A target is `(node, surface)`: `surface` None counts users (y = 1 for each reached user), -1 counts
all of a reached user's impressions, s >= 0 the impressions on surface s. The same key names a
fall-back rate's *base*: the denominator of the rate, per user (1, total impressions, impressions on s).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from fxrec.audience.evaluate import mask
from fxrec.audience.query import And, Node, Or
from fxrec.audience.schema import Columns

Target = tuple[Node, int | None]  # (query node, surface): see the module docstring
Surface = int | None  # None: users; -1: all impressions; s >= 0: impressions on surface s


@dataclass
class Sums:
    """A target's per-stratum sums over the rows: sum w y, sum (w y)^2 and the rows with y != 0."""

    total: np.ndarray
    squares: np.ndarray
    rows: np.ndarray  # rows with y != 0 (for users: the sample users reached)


@dataclass
class Cells:
    """Weighted sums of some rows (weight w = N_h / n_h, times the base): overall and per cell of each
    dimension. `rows`: how many rows; `count[d]`: rows per cell of dimension d."""

    rows: int
    total: float
    squares: float
    cell_total: list[np.ndarray]
    cell_squares: list[np.ndarray]
    count: list[np.ndarray]


def add(parts: list):
    """The sum of the same statistics from several sets of rows (shards): dicts, Sums and Cells alike."""
    first = parts[0]
    if isinstance(first, dict):
        return {key: add([part[key] for part in parts]) for key in first}
    if isinstance(first, Sums):
        return Sums(sum(p.total for p in parts), sum(p.squares for p in parts), sum(p.rows for p in parts))
    if isinstance(first, Cells):
        return Cells(
            sum(p.rows for p in parts),
            sum(p.total for p in parts),
            sum(p.squares for p in parts),
            [sum(arrays) for arrays in zip(*(p.cell_total for p in parts), strict=True)],
            [sum(arrays) for arrays in zip(*(p.cell_squares for p in parts), strict=True)],
            [sum(arrays) for arrays in zip(*(p.count for p in parts), strict=True)],
        )
    raise TypeError(f"cannot add {type(first).__name__}")


def closure(node: Node) -> list[Node]:
    """The node and, for an `and` / `or`, its terms recursively: every node whose rate the fall-back
    may need for it (a thin `and` / `or` takes its terms as independent)."""
    found = [node]
    if isinstance(node, And | Or):
        for item in node.items:
            found += closure(item)
    return list(dict.fromkeys(found))


@dataclass
class SampleRows:
    """Sample rows with what the estimator needs of each: its stratum (an index into the census), its
    weight N_h / n_h and its cell on each dimension. The whole sample, or one shard of it."""

    rows: Columns
    row_stratum: np.ndarray  # int32 [rows]
    weights: np.ndarray  # float64 [rows]
    row_cells: np.ndarray  # int64 [rows, depth]
    strata: int  # H: the census's strata (all of them, on every shard)
    cell_sizes: tuple[int, ...]  # cells per dimension
    _bases: dict = field(default_factory=dict, repr=False, compare=False)  # base per surface, cached

    def __len__(self) -> int:
        return len(self.row_stratum)

    def take(self, index: np.ndarray) -> SampleRows:
        return SampleRows(
            self.rows.take(index),
            self.row_stratum[index],
            self.weights[index],
            self.row_cells[index],
            self.strata,
            self.cell_sizes,
        )

    def split(self, shards: int) -> list[SampleRows]:
        """`shards` parts, row r in part r mod shards (each part spans the strata)."""
        return [self.take(np.arange(s, len(self), shards)) for s in range(shards)]

    def nbytes(self) -> int:
        return self.rows.nbytes() + self.row_stratum.nbytes + self.weights.nbytes

    def base(self, surface: Surface) -> np.ndarray:
        """Each row's base on `surface` (1 for users), computed once."""
        if surface not in self._bases:
            if surface is None:
                self._bases[surface] = np.ones(len(self))
            elif surface == -1:
                self._bases[surface] = self.rows.total_impressions.astype(float)
            else:
                self._bases[surface] = self.rows.impressions[:, surface].astype(float)
        return self._bases[surface]

    def target_sums(self, targets: list[Target]) -> dict[Target, Sums]:
        """Per-stratum sum w y and sum (w y)^2 of each target (w: the row's weight): y is 1 per reached
        user (surface None), or the reached user's impressions (all of them: -1; on surface s: s)."""
        cache: dict = {}
        found = {}
        for node, surface in targets:
            reached = mask(node, self.rows, cache)
            y = reached.astype(float) if surface is None else np.where(reached, self.base(surface), 0.0)
            y = self.weights * y
            found[(node, surface)] = Sums(
                np.bincount(self.row_stratum, weights=y, minlength=self.strata),
                np.bincount(self.row_stratum, weights=y * y, minlength=self.strata),
                np.bincount(self.row_stratum, weights=y != 0, minlength=self.strata),
            )
        return found

    def rate_sums(self, targets: list[Target], lazy: bool = True) -> Mapping[Target, Cells]:
        """For each fall-back node and base: the weighted sums w * base of the rows it reaches (with a
        positive base), overall and per cell. `lazy` (in process): each node's sums are computed when
        the estimator first reads them, for any node; else (a shard answering over the network) every
        node of each target's `closure` at once, since the estimator may need any of them."""
        if lazy:
            return _LazyCells(self)
        cache: dict = {}
        found = {}
        for node, surface in targets:
            for part in closure(node):
                if (part, surface) not in found:
                    found[(part, surface)] = self.cells_of(part, surface, cache)
        return found

    def cells_of(self, node: Node, surface: Surface, cache: dict) -> Cells:
        hit = mask(node, self.rows, cache)
        base = self.base(surface)
        rows = np.flatnonzero(hit & (base > 0)) if surface is not None else np.flatnonzero(hit)
        return self._cells(rows, self.weights[rows] * base[rows])

    def base_sums(self, surfaces: list[Surface]) -> dict[Surface, Cells]:
        """The weighted sums w * base of every row, per base: the fall-back rates' denominators."""
        everyone = np.arange(len(self))
        return {surface: self._cells(everyone, self.weights * self.base(surface)) for surface in surfaces}

    def _cells(self, rows: np.ndarray, wb: np.ndarray) -> Cells:
        cells = [self.row_cells[rows, d] for d in range(len(self.cell_sizes))]
        return Cells(
            len(rows),
            float(wb.sum()),
            float((wb * wb).sum()),
            [
                np.bincount(c, weights=wb, minlength=size)
                for c, size in zip(cells, self.cell_sizes, strict=True)
            ],
            [
                np.bincount(c, weights=wb * wb, minlength=size)
                for c, size in zip(cells, self.cell_sizes, strict=True)
            ],
            [np.bincount(c, minlength=size) for c, size in zip(cells, self.cell_sizes, strict=True)],
        )


class _LazyCells(Mapping):
    """`SampleRows.rate_sums` computed on first read, per (node, surface), sharing leaf masks."""

    def __init__(self, rows: SampleRows):
        self.rows, self.found, self.cache = rows, {}, {}

    def __getitem__(self, key: Target) -> Cells:
        if key not in self.found:
            self.found[key] = self.rows.cells_of(*key, self.cache)
        return self.found[key]

    def __iter__(self) -> Iterator[Target]:
        return iter(self.found)

    def __len__(self) -> int:
        return len(self.found)
