"""Reach estimation: how many users (and impressions) a targeting query reaches, from a sample.

`ReachIndex.query(expr) -> Estimate` answers in-process from a `StratifiedSample`. The seam for
sharding (part 2: Ray actors, each holding a ReachIndex over a shard of the rows and the full census):
every sum below (per stratum, per cell of a dimension) is additive over shards, so a scatter-gather
adds the shards' sums before taking the estimates, rates and the support.

The estimate, for a target y (1 per reached user, or the user's reached impressions on one surface,
summed over surfaces):

1. strata the query decides (Kleene logic over the strata's cells, fxrec.audience.strata.kleene)
   count exactly: all of N_h (or I_h,s) when the query holds for the whole stratum, nothing when it
   holds for none of it;
2. the other strata use the weighted count  Y = sum_h N_h / n_h * sum_{i in h} y_i,  unbiased, with
   variance  sum_h N_h^2 (1 - n_h/N_h) s_h^2 / n_h  and a normal confidence interval (z);
3. fuzzy fall-back: when the query's support (sample users it reaches in those strata) is below
   `min_support`, each such stratum h also gets a synthetic estimate from coarser strata, rescaled to
   h: its *residual* query (the query with the terms h's own cells decide fixed) has a weighted rate
   R over the whole sample; each dimension d whose parent stratum "cell c_d(h) on d, anything on the
   others" has `min_support` reached sample users multiplies it by that parent's rate over R (a
   main-effects model), and an `and` / `or` too thin as a whole is taken as independent terms. Then
   Y_h = N_h * rate (for impressions, I_h,s * the share of impressions reached). The answer blends
   the weighted count (weight support / min_support) with the synthetic one (the rest), so a
   minority with no sampled user still gets its parents' rate instead of zero, and the estimate moves
   smoothly into the plain count as support grows. The variance ignores the synthetic part's bias;
   `Estimate.fallback` says when it was used. Strata the budget could not sample at all always take
   the synthetic estimate.

Setting `exact_strata=False, min_support=0` gives the plain stratified estimator (the baselines).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fxrec.audience.evaluate import mask
from fxrec.audience.query import And, Node, Or, Query, leaves, parse, substitute
from fxrec.audience.sample import StratifiedSample
from fxrec.audience.schema import AudienceSchema
from fxrec.audience.strata import TRUE, UNKNOWN, kleene


@dataclass(frozen=True)
class Estimate:
    users: float
    users_low: float
    users_high: float
    impressions: float
    impressions_low: float
    impressions_high: float
    support: int  # sample users the query reaches in the strata it leaves undecided
    fallback: bool  # the fuzzy fall-back was blended in (support < min_support)
    exact: bool  # every stratum was decided: the counts are exact

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Total:
    value: float
    variance: float


class ReachIndex:
    """A stratified sample ready to answer targeting queries."""

    def __init__(
        self,
        schema: AudienceSchema,
        sample: StratifiedSample,
        min_support: int = 50,
        z: float = 1.96,
        exact_strata: bool = True,
    ):
        self.schema, self.sample = schema, sample
        self.min_support, self.z, self.exact_strata = min_support, z, exact_strata
        self.coordinates = sample.strata.coordinates(sample.census.keys)
        self.weights = sample.weights
        self.strata = len(sample.census.keys)
        self._decisions: dict[Node, np.ndarray] = {}
        self.row_impressions = sample.rows.total_impressions.astype(float)
        self.stratum_impressions = sample.census.impressions.sum(1)
        self.row_cells = self.coordinates[sample.row_stratum]
        self._base_sums: dict = {}  # [rows, depth]: each row's cell per dimension

    def nbytes(self) -> int:
        return self.sample.nbytes()

    def query(self, expr: str | Query) -> Estimate:
        query = parse(expr, self.schema) if isinstance(expr, str) else expr
        rows, census = self.sample.rows, self.sample.census
        surfaces = len(self.schema.surfaces)
        cache: dict = {}
        users_node = query.users(surfaces)
        reached = mask(users_node, rows, cache)
        t, f = self._kleene(users_node)
        undecided = ~(t | f)
        support = int((reached & undecided[self.sample.row_stratum]).sum())
        fallback = bool(
            self.min_support > 0
            and support < self.min_support
            and undecided.any()
            and self.sample.strata.depth
        )
        share = support / self.min_support if fallback else None
        ones = np.ones(len(rows))
        users = self._total(
            users_node, reached.astype(float), ones, census.users, t, undecided, share, cache, None
        )
        impressions = _Total(0.0, 0.0)
        if not query.uses_surface:  # one target: all of a reached user's impressions
            y = np.where(reached, self.row_impressions, 0.0)
            impressions = self._total(
                users_node,
                y,
                self.row_impressions,
                self.stratum_impressions,
                t,
                undecided,
                share,
                cache,
                -1,
            )
        for s, node in enumerate(query.per_surface(surfaces) if query.uses_surface else []):
            on_s = rows.impressions[:, s].astype(float)
            ts, fs = self._kleene(node)
            y = np.where(mask(node, rows, cache), on_s, 0.0)
            part = self._total(node, y, on_s, census.impressions[:, s], ts, ~(ts | fs), share, cache, s)
            impressions = _Total(impressions.value + part.value, impressions.variance + part.variance)
        exact_users = float(census.users[t].sum())
        return Estimate(
            users=users.value,
            users_low=max(users.value - self.z * users.variance**0.5, exact_users),
            users_high=users.value + self.z * users.variance**0.5,
            impressions=impressions.value,
            impressions_low=max(impressions.value - self.z * impressions.variance**0.5, 0.0),
            impressions_high=impressions.value + self.z * impressions.variance**0.5,
            support=support,
            fallback=fallback,
            exact=not undecided.any(),
        )

    def _decide(self, leaf: Node | None) -> np.ndarray:
        if leaf is None or not self.exact_strata:
            return np.full(self.strata, UNKNOWN, dtype=np.int8)
        if leaf not in self._decisions:
            self._decisions[leaf] = self.sample.strata.decisions(leaf, self.coordinates)
        return self._decisions[leaf]

    def _kleene(self, node: Node) -> tuple[np.ndarray, np.ndarray]:
        return kleene(node, self._decide)

    def _total(self, node, y, base, totals, t, undecided, fallback, cache, surface) -> _Total:
        """Exact strata + weighted count over undecided strata for one target y; with `fallback` (the
        weighted count's share, None when the fall-back is off) blended with the fall-back."""
        sample = self.sample
        exact = float(totals[t].sum())
        h, n, big_n = sample.row_stratum, sample.taken, sample.census.users
        sums = np.bincount(h, weights=y, minlength=self.strata)
        squares = np.bincount(h, weights=y * y, minlength=self.strata)
        counts = np.maximum(n, 1)
        s2 = np.where(n > 1, (squares - sums * sums / counts) / np.maximum(n - 1, 1), 0.0).clip(min=0)
        value = float((big_n / counts * sums)[undecided].sum())
        variance = float(
            (big_n.astype(float) ** 2 * (1 - n / np.maximum(big_n, 1)) * s2 / counts)[undecided].sum()
        )
        empty = undecided & (n == 0)  # strata the budget could not reach borrow from their parents
        if empty.any() and self.min_support > 0 and sample.strata.depth:
            borrowed = self._fallback(node, base, totals, empty, cache, surface, 0.0)
            value, variance = value + borrowed.value, variance + borrowed.variance
        if fallback is None:
            return _Total(exact + value, variance)
        # the fall-back, blended with the weighted count by the support: weight support / min_support
        # on the count, the rest on the parents' rescaled rates
        synthetic = self._fallback(node, base, totals, undecided, cache, surface, 0.0)
        share = fallback
        return _Total(
            exact + share * value + (1 - share) * synthetic.value,
            share**2 * variance + (1 - share) ** 2 * synthetic.variance,
        )

    def _fallback(self, node, base, totals, undecided, cache, surface, exact) -> _Total:
        """Each undecided stratum h takes its residual query's rate from coarser strata, rescaled: the
        root's weighted rate R times, for each dimension d, the ratio R_d(c_d(h)) / R of the parent
        that keeps only h's cell on d (when that parent has `min_support` reached sample users; else 1)."""
        own = list(dict.fromkeys(leaves(node)))
        decided = (
            np.stack([self._decide(leaf) for leaf in own], axis=1)
            if own
            else np.zeros((self.strata, 0), np.int8)
        )
        patterns, pattern_of = np.unique(decided, axis=0, return_inverse=True)
        pattern_of = pattern_of.reshape(-1)
        value, variance = exact, 0.0
        for p, pattern in enumerate(patterns):
            strata = np.flatnonzero(undecided & (pattern_of == p))
            if not len(strata):
                continue
            fixed = {leaf: bool(d == TRUE) for leaf, d in zip(own, pattern, strict=True) if d != UNKNOWN}
            residual = substitute(node, lambda leaf, fixed=fixed: fixed.get(leaf))
            rate, relvar = self._rate(residual, strata, base, surface, cache)
            rate = rate.clip(0, 1)
            estimate = totals[strata] * rate
            value += float(estimate.sum())
            variance += float((estimate**2 * relvar).sum())
        return _Total(value, variance)

    def _rate(self, node, strata, base, surface, cache) -> tuple[np.ndarray, np.ndarray]:
        """The residual's rate (share of users, or of impressions on the surface) for each of `strata`,
        with its relative variance: an `and` / `or` that reaches fewer than `min_support` sample users
        takes its terms as independent given the stratum (rate: the product of its terms' rates / one
        minus the product of their complements); any other node is rescaled from its parents along each
        dimension (see `_fallback`). Computed for every stratum once per node and query (`cache`)."""
        key = ("rate", node, surface)
        if key not in cache:
            cache[key] = self._rate_all(node, base, surface, cache)
        rate, relvar = cache[key]
        return rate[strata], relvar[strata]

    def _bases(self, base: np.ndarray, surface) -> tuple[float, float, list[tuple[np.ndarray, np.ndarray]]]:
        """sum w*base and sum (w*base)^2, overall and per cell of each dimension (the denominators of
        every rate on this target), computed once per target."""
        if surface not in self._base_sums:
            wb = self.weights * base
            cells = [
                (
                    np.bincount(self.row_cells[:, d], weights=wb, minlength=dim.size),
                    np.bincount(self.row_cells[:, d], weights=wb * wb, minlength=dim.size),
                )
                for d, dim in enumerate(self.sample.strata.dimensions)
            ]
            self._base_sums[surface] = (float(wb.sum()), float((wb * wb).sum()), cells)
        return self._base_sums[surface]

    def _rate_all(self, node, base, surface, cache) -> tuple[np.ndarray, np.ndarray]:
        everything = np.arange(self.strata)
        hit = mask(node, self.sample.rows, cache)
        rows = np.flatnonzero(hit & (base > 0)) if surface is not None else np.flatnonzero(hit)
        if isinstance(node, And | Or) and len(rows) < self.min_support:
            # too thin together: its terms taken as independent given the stratum
            rate, relvar = np.ones(self.strata), np.zeros(self.strata)
            for item in node.items:
                part, part_relvar = self._rate(item, everything, base, surface, cache)
                part = part.clip(0, 1)
                rate, relvar = rate * (part if isinstance(node, And) else 1 - part), relvar + part_relvar
            return (rate if isinstance(node, And) else 1 - rate), relvar
        # only the reached rows carry y: every sum over y is a sum over them
        wb = self.weights[rows] * base[rows]
        wy = wb if surface is not None else self.weights[rows]
        total_b, total_b2, cells_b = self._bases(base, surface)

        def ratio(numerator, cross, square, denominator, denominator2):
            r = numerator / np.maximum(denominator, 1e-12)
            residual = square - 2 * r * cross + r * r * denominator2  # sum (w y - r w base)^2
            return r, residual.clip(min=0) / np.maximum(denominator, 1e-12) ** 2 / np.maximum(r, 1e-12) ** 2

        root, root_relvar = ratio(wy.sum(), (wy * wb).sum(), (wy * wy).sum(), total_b, total_b2)
        rate = np.full(self.strata, root)
        relvar = np.full(self.strata, root_relvar if root > 0 else 0.0)
        for d, dimension in enumerate(self.sample.strata.dimensions):
            cells = self.row_cells[rows, d]
            size = dimension.size
            cell_rate, cell_relvar = ratio(
                np.bincount(cells, weights=wy, minlength=size),
                np.bincount(cells, weights=wy * wb, minlength=size),
                np.bincount(cells, weights=wy * wy, minlength=size),
                *cells_b[d],
            )
            support = np.bincount(cells, minlength=size)
            mine = self.coordinates[:, d]
            ok = (support[mine] >= self.min_support) & (cells_b[d][0][mine] > 0) & (root > 0)
            rate = np.where(ok, rate * cell_rate[mine] / max(root, 1e-12), rate)
            relvar = np.where(ok, relvar + cell_relvar[mine], relvar)
        return rate, relvar


__all__ = ["Estimate", "ReachIndex"]
