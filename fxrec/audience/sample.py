"""Samples of a population drawn in two passes over its chunks, so only the sample stays in memory.

Pass 1 (`census`) counts each stratum's users N_h and impressions per surface I_h,s. The allocation
n_h then comes from the strata (Neyman, proportional, or one stratum for a uniform sample). Pass 2
(`draw`) keeps, per stratum, the n_h users with the smallest random keys seen so far: a bottom-k
sample, so each stratum's sample is a simple random sample without replacement of exactly n_h users
whatever the chunk order. Several samples (fxrec's, and the baselines) are drawn in the same pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from fxrec.audience.margins import Margins
from fxrec.audience.schema import Columns
from fxrec.audience.strata import Stratification


@dataclass
class Census:
    """Population counts per non-empty stratum (keys sorted)."""

    keys: np.ndarray  # int64 [H]
    users: np.ndarray  # int64 [H]
    impressions: np.ndarray  # int64 [H, surfaces]

    def index(self, keys: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.keys, keys)


class CensusCounter:
    """Accumulates a `Census` chunk by chunk."""

    def __init__(self, strata: Stratification):
        self.strata = strata
        self.users: dict[int, int] = {}
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, chunk: Columns) -> None:
        keys, inverse = np.unique(self.strata.keys(chunk), return_inverse=True)
        users = np.bincount(inverse, minlength=len(keys))
        impressions = np.stack(
            [
                np.bincount(inverse, weights=chunk.impressions[:, s], minlength=len(keys))
                for s in range(chunk.impressions.shape[1])
            ],
            axis=1,
        )
        self.parts.append((keys, users, impressions.astype(np.int64)))

    def result(self) -> Census:
        keys = np.concatenate([p[0] for p in self.parts])
        unique, inverse = np.unique(keys, return_inverse=True)
        users = np.bincount(
            inverse, weights=np.concatenate([p[1] for p in self.parts]), minlength=len(unique)
        )
        imps = np.concatenate([p[2] for p in self.parts])
        impressions = np.stack(
            [np.bincount(inverse, weights=imps[:, s], minlength=len(unique)) for s in range(imps.shape[1])],
            axis=1,
        )
        return Census(unique, users.astype(np.int64), impressions.astype(np.int64))


def census(strata: Stratification, chunks: Iterable[Columns]) -> Census:
    counter = CensusCounter(strata)
    for chunk in chunks:
        counter.add(chunk)
    return counter.result()


@dataclass
class StratifiedSample:
    """A sample with its strata: row r belongs to stratum `row_stratum[r]` (an index into census.keys),
    which holds census.users[h] users of whom taken[h] were sampled."""

    strata: Stratification
    census: Census
    taken: np.ndarray  # int64 [H]
    rows: Columns
    row_stratum: np.ndarray  # int32 [rows]
    margins: Margins | None = None  # the census of one-way (and dimension x value) margins, if kept
    calibrated: np.ndarray | None = None  # float32 [rows]: weights raked to the margins, if calibrated

    @property
    def weights(self) -> np.ndarray:
        """Each row's expansion weight: calibrated (fxrec.audience.calibration), else N_h / n_h."""
        if self.calibrated is not None:
            return self.calibrated.astype(np.float64)
        return (self.census.users / np.maximum(self.taken, 1))[self.row_stratum]

    def calibrate(self, min_rows: int | None = None) -> StratifiedSample:
        """This sample with its weights raked to its margins (a stored float32 weight per row)."""
        from fxrec.audience.calibration import MIN_ROWS, calibrated_weights

        assert self.margins is not None, "calibration needs the census of margins"
        weights = calibrated_weights(
            self.margins,
            self.rows,
            self.row_stratum,
            self.census.users,
            self.taken,
            self.strata.coordinates(self.census.keys),
            MIN_ROWS if min_rows is None else min_rows,
        )
        return StratifiedSample(
            self.strata, self.census, self.taken, self.rows, self.row_stratum, self.margins, weights
        )

    def nbytes(self) -> int:
        extra = self.margins.nbytes() if self.margins is not None else 0
        extra += self.calibrated.nbytes if self.calibrated is not None else 0
        return (
            self.rows.nbytes()
            + self.row_stratum.nbytes
            + 3 * 8 * len(self.census.keys)
            + self.census.impressions.nbytes
            + extra
        )


class BottomK:
    """Keeps, per stratum, the `taken[h]` rows with the smallest random keys (a seeded stream)."""

    def __init__(
        self,
        strata: Stratification,
        census: Census,
        taken: np.ndarray,
        seed: int,
        keep: Callable[[Columns], Columns] | None = None,
        margins: Margins | None = None,
    ):
        self.strata, self.census, self.taken, self.margins = strata, census, taken, margins
        self.rng = np.random.default_rng(seed)
        self.keep = keep or (lambda columns: columns)
        self.rows: Columns | None = None
        self.stratum = np.zeros(0, dtype=np.int64)
        self.random = np.zeros(0)

    def add(self, chunk: Columns) -> None:
        stratum = self.census.index(self.strata.keys(chunk))
        random = self.rng.random(len(chunk))
        wanted = self.taken[stratum] > 0
        chunk, stratum, random = (
            self.keep(chunk.take(np.flatnonzero(wanted))),
            stratum[wanted],
            random[wanted],
        )
        rows = chunk if self.rows is None else Columns.concat([self.rows, chunk])
        stratum = np.concatenate([self.stratum, stratum])
        random = np.concatenate([self.random, random])
        order = np.lexsort((random, stratum))
        first = np.searchsorted(stratum[order], stratum[order], side="left")
        rank = np.arange(len(order)) - first
        kept = np.sort(order[rank < self.taken[stratum[order]]])
        self.rows, self.stratum, self.random = rows.take(kept), stratum[kept], random[kept]

    def result(self) -> StratifiedSample:
        assert self.rows is not None, "no chunks were added"
        return StratifiedSample(
            self.strata,
            self.census,
            self.taken.copy(),
            self.rows,
            self.stratum.astype(np.int32),
            self.margins,
        )


def draw(
    strata: Stratification, census: Census, taken: np.ndarray, chunks: Iterable[Columns], seed: int
) -> StratifiedSample:
    sampler = BottomK(strata, census, taken, seed)
    for chunk in chunks:
        sampler.add(chunk)
    return sampler.result()
