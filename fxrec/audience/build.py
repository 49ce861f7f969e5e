"""Building a `ReachIndex` from a population in chunks: learn the strata on a pilot (a past log) and past
queries, count the strata and the census of margins (pass 1), allocate the budget (Neyman with a
minimum), draw (pass 2), calibrate the weights to the margins.

`chunks` is a callable returning a fresh iterator over the population's chunks (each pass reads them
once): `lambda: iter_chunks(config)` for a simulated population, `lambda: read_population(path)[1]`
for a written one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from fxrec.audience.margins import MarginCounter
from fxrec.audience.query import Query
from fxrec.audience.reach import ReachIndex
from fxrec.audience.sample import Census, CensusCounter, draw
from fxrec.audience.schema import AudienceSchema, Columns
from fxrec.audience.strata import Stratification, Workload, learn_stratification, neyman, stratum_sigma

PILOT_SUPPORT = 20  # pilot users a stratum needs for its own sigma; else its nearest parent's
MAX_CENSUS_SHARE = 0.25  # of a byte budget: a larger census of margins would cost too many rows


def population_sigma(
    strata: Stratification, counts: Census, pilot: Columns, workload: Workload
) -> np.ndarray:
    """sigma_h for every stratum of the population, from the pilot: a stratum with fewer than
    PILOT_SUPPORT pilot users takes the sigma of its nearest parent (fewer dimensions) that has them."""
    pilot_keys = strata.keys(pilot)
    sigma = np.zeros(len(counts.keys))
    done = np.zeros(len(counts.keys), dtype=bool)
    for level in range(strata.depth, -1, -1):
        parents, ids = np.unique(strata.parent(pilot_keys, level), return_inverse=True)
        level_sigma = stratum_sigma(ids, len(parents), workload)
        support = np.bincount(ids, minlength=len(parents))
        mine = strata.parent(counts.keys, level)
        where = np.searchsorted(parents, mine).clip(max=len(parents) - 1)
        found = (parents[where] == mine) & (support[where] >= PILOT_SUPPORT) & ~done
        if level == 0:
            found = ~done
        sigma[found] = level_sigma[where[found]]
        done |= found
    return sigma


def build_reach_index(
    schema: AudienceSchema,
    chunks: Callable[[], Iterable[Columns]],
    pilot: Columns,
    past_queries: list[Query],
    budget: int,
    minimum: int = 5,
    min_support: int = 50,
    mix: float = 0.5,  # with calibrated weights, 0.5 beat 0.8 (bench/reach.py's MIX)
    seed: int = 0,
    population: int | None = None,
    calibrate: bool = True,
    row_bytes: int | None = None,
) -> ReachIndex:
    """Strata learned on `pilot` and `past_queries`, a sample of `budget` users drawn in two passes over
    `chunks()` (three when `population`, the number of users, is not given). `calibrate`: pass 1 also
    counts the census of margins (fxrec.audience.margins), kept for the fall-back's rates, and the
    sample's weights are raked to it (fxrec.audience.calibration). `row_bytes` (a budget in bytes:
    `budget` rows of that size): the census and the stored weights (4 bytes a row) come out of the
    rows, and a census over MAX_CENSUS_SHARE of the bytes is not kept (nor calibrated to)."""
    if population is None:
        population = sum(len(chunk) for chunk in chunks())
    strata = learn_stratification(schema, pilot, past_queries, population, budget, minimum)
    counter = CensusCounter(strata)
    margin_counter = MarginCounter(schema, strata) if calibrate else None
    for chunk in chunks():
        counter.add(chunk)
        if margin_counter is not None:
            margin_counter.add(chunk)
    counts = counter.result()
    margins = margin_counter.result() if margin_counter is not None else None
    if margins is not None and row_bytes is not None:
        total = budget * row_bytes
        if margins.nbytes() > MAX_CENSUS_SHARE * total:
            margins = None
        else:
            budget = max(1, int((total - margins.nbytes()) // (row_bytes + 4)))
    sigma = population_sigma(strata, counts, pilot, Workload.evaluate(past_queries, pilot))
    taken = neyman(counts.users, sigma, budget, minimum, mix)
    sample = draw(strata, counts, taken, chunks(), seed)
    if margins is not None:
        sample.margins = margins
        sample = sample.calibrate()
    return ReachIndex(schema, sample, min_support=min_support)
