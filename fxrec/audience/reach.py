"""Reach estimation: how many users (and impressions) a targeting query reaches, from a sample.

`ReachIndex.query(expr) -> Estimate` answers in-process from a `StratifiedSample`. It is two halves:
the `ReachEstimator` holds what every replica of the index shares (schema, strata, census, allocation)
and turns *summed* statistics into the estimate; the sample rows (fxrec.audience.statistics.SampleRows)
give those statistics: per stratum, per cell of a dimension, all additive over any split of the rows.
In process one `SampleRows` holds the whole sample; on Ray (fxrec.audience.shards) each shard actor
holds a part, a query scatters and the estimator adds the shards' sums before taking the estimates,
rates and the support: both paths run this one estimator. A query asks the rows at most twice: the
targets' per-stratum sums (always), then the fall-back's rates (only when it engages).

The estimate, for a target y (1 per reached user, or the user's reached impressions on one surface,
summed over surfaces):

1. strata the query decides (Kleene logic over the strata's cells, fxrec.audience.strata.kleene)
   count exactly: all of N_h (or I_h,s) when the query holds for the whole stratum, nothing when it
   holds for none of it;
2. the other strata use the weighted count  Y = sum_h sum_{i in h} w_i y_i  with the row's weight
   w_i: N_h / n_h (unbiased, variance  sum_h N_h^2 (1 - n_h/N_h) s_h^2 / n_h), or that weight
   calibrated to the census of margins (fxrec.audience.calibration: the weighted sample reproduces
   the users of every country, age band, device, interest segment...; the variance is then the
   weighted values' within-stratum spread, the weights taken as fixed), and a normal interval (z);
3. fuzzy fall-back: when the query's support (sample users it reaches in those strata) is below
   `min_support`, each such stratum h also gets a synthetic estimate from coarser strata, rescaled to
   h: its *residual* query (the query with the terms h's own cells decide fixed) has a weighted rate
   R over the whole sample; each dimension d whose parent stratum "cell c_d(h) on d, anything on the
   others" has `min_support` reached sample users multiplies it by that parent's rate over R (a
   main-effects model), and an `and` / `or` too thin as a whole is taken as independent terms. With
   a census of margins (fxrec.audience.margins), a leaf the census counts (`country:HU`, `age in
   25..34`, `interest:pets`, or its negation) takes the census's rate instead, raked so its strata
   add up to the exact count of every dimension cell (for the users target), and a thin `and` is
   lifted, for each pair of such leaves, to the pair's count taken as independent only given the
   age band or country where one of them lies (`margins.pair_count`: a region and an interest meet
   in the region's country, an age range and an interest in its bands). Then
   Y_h = N_h * rate (for impressions, I_h,s * the share of impressions reached). The answer blends
   the weighted count (weight support / min_support) with the synthetic one (the rest), so a
   minority with no sampled user still gets its parents' rate instead of zero, and the estimate moves
   smoothly into the plain count as support grows. The synthetic part's variance adds a bias term:
   the squared gap between it and the weighted count over the same strata (an estimate of its bias^2
   plus the count's variance), so the interval widens where the two disagree; `Estimate.fallback`
   says when it was used. Strata the budget could not sample at all always take
   the synthetic estimate.

Setting `exact_strata=False, min_support=0` gives the plain stratified estimator (the baselines).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from fxrec.audience.margins import Margins, leaf_rates, pair_count
from fxrec.audience.query import And, Node, Not, Or, Query, leaves, parse, substitute
from fxrec.audience.sample import Census, StratifiedSample
from fxrec.audience.schema import AudienceSchema
from fxrec.audience.statistics import Cells, SampleRows, Sums, Surface, Target
from fxrec.audience.strata import TRUE, UNKNOWN, Stratification, kleene


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


class Statistics(Protocol):
    """Where the estimator gets its sums: sample rows in process, or the shards' sums added up."""

    def target_sums(self, targets: list[Target]) -> dict[Target, Sums]: ...

    def rate_sums(self, targets: list[Target]) -> Mapping[Target, Cells]: ...

    def base_sums(self, surfaces: list[Surface]) -> dict[Surface, Cells]: ...


@dataclass
class _Total:
    value: float
    variance: float


@dataclass
class _Target:
    """One target of a query: its node and surface, the strata totals it scales, the strata the query
    decides for it, and (filled in) the residual queries its fall-back needs, per group of strata."""

    node: Node
    surface: Surface
    totals: np.ndarray
    true: np.ndarray
    undecided: np.ndarray
    borrowed: list[tuple[Node, np.ndarray]] = field(default_factory=list)  # strata the budget missed
    synthetic: list[tuple[Node, np.ndarray]] = field(default_factory=list)  # the fall-back's strata


class ReachEstimator:
    """What every copy of a reach index shares: the schema, the strata with their census and allocation
    (n_h), the fall-back's settings. `answer(expr, statistics)` turns summed statistics into an Estimate."""

    def __init__(
        self,
        schema: AudienceSchema,
        strata: Stratification,
        census: Census,
        taken: np.ndarray,
        min_support: int = 50,
        z: float = 1.96,
        exact_strata: bool = True,
        margins: Margins | None = None,
    ):
        self.schema, self.strata, self.census, self.taken = schema, strata, census, np.asarray(taken)
        self.margins = margins
        self.min_support, self.z, self.exact_strata = min_support, z, exact_strata
        self.coordinates = strata.coordinates(census.keys)
        self.size = len(census.keys)
        self.stratum_impressions = census.impressions.sum(1)
        self._decisions: dict[Node, np.ndarray] = {}
        self._census_rates: dict[Node, np.ndarray | None] = {}
        self._bases: dict[Surface, Cells] | None = None

    @classmethod
    def of(cls, schema: AudienceSchema, sample: StratifiedSample, **options) -> ReachEstimator:
        return cls(schema, sample.strata, sample.census, sample.taken, margins=sample.margins, **options)

    def sample_rows(self, sample: StratifiedSample) -> SampleRows:
        """The sample's rows with their strata, weights and cells: the statistics of this estimator."""
        weights = sample.weights
        return SampleRows(
            sample.rows,
            sample.row_stratum,
            weights.astype(float),
            self.coordinates[sample.row_stratum],
            self.size,
            tuple(d.size for d in self.strata.dimensions),
        )

    def surfaces(self) -> list[Surface]:
        return [None, -1, *range(len(self.schema.surfaces))]

    def answer(self, expr: str | Query, statistics: Statistics, detail: dict | None = None) -> Estimate:
        """The estimate for a query, from `statistics`' sums. `detail`, when given, receives the strata
        whose users' count the fall-back entered (`fallback_strata`: stratum indices) and the number of
        strata the query left to the sample (`undecided_strata`)."""
        query = parse(expr, self.schema) if isinstance(expr, str) else expr
        surfaces = len(self.schema.surfaces)
        users_node = query.users(surfaces)
        t, f = self._kleene(users_node)
        undecided = ~(t | f)
        targets = [_Target(users_node, None, self.census.users, t, undecided)]
        if not query.uses_surface:  # one target: all of a reached user's impressions
            targets.append(_Target(users_node, -1, self.stratum_impressions, t, undecided))
        for s, node in enumerate(query.per_surface(surfaces) if query.uses_surface else []):
            ts, fs = self._kleene(node)
            targets.append(_Target(node, s, self.census.impressions[:, s], ts, ~(ts | fs)))
        sums = statistics.target_sums([(target.node, target.surface) for target in targets])
        reached = sums[(users_node, None)].rows  # reached sample users per stratum
        support = int(round(float(reached[undecided].sum())))
        fallback = bool(
            self.min_support > 0 and support < self.min_support and undecided.any() and self.strata.depth
        )
        share = support / self.min_support if fallback else None
        # the fall-back's residual queries, then their rates' sums in one more request (when needed)
        requests: dict[Target, None] = {}
        for target in targets:
            empty = target.undecided & (self.taken == 0)
            if empty.any() and self.min_support > 0 and self.strata.depth:
                target.borrowed = self._residuals(target.node, empty)
            if fallback:
                target.synthetic = self._residuals(target.node, target.undecided)
            for residual, _ in target.borrowed + target.synthetic:
                requests[(residual, target.surface)] = None
        if detail is not None:
            entered = [strata for _, strata in targets[0].borrowed + targets[0].synthetic]
            detail["fallback_strata"] = sorted({int(h) for group in entered for h in group})
            detail["undecided_strata"] = int(undecided.sum())
        rates = {"cells": statistics.rate_sums(list(requests)) if requests else {}}
        if requests and self._bases is None:
            self._bases = statistics.base_sums(self.surfaces())
        users = self._total(targets[0], sums[(users_node, None)], share, rates)
        impressions = _Total(0.0, 0.0)
        for target in targets[1:]:
            part = self._total(target, sums[(target.node, target.surface)], share, rates)
            impressions = _Total(impressions.value + part.value, impressions.variance + part.variance)
        exact_users = float(self.census.users[t].sum())
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

    def stratum_label(self, stratum: int) -> str:
        """A stratum in words: each dimension's cell, e.g. `age band 18-24, country US, surfaces feed+video`."""
        parts = []
        for dimension, cell in zip(self.strata.dimensions, self.coordinates[stratum], strict=True):
            value = dimension.cells[int(cell)]
            if dimension.kind == "categorical":
                names = self.schema.categorical[dimension.field]
                codes = sorted(value)
                shown = names[codes[0]] if len(codes) == 1 else f"{len(codes)} others"
            elif dimension.kind == "surfaces":
                shown = "+".join(s for i, s in enumerate(self.schema.surfaces) if (int(cell) + 1) >> i & 1)
            elif dimension.kind == "band":
                shown = f"{value[0]}-{value[1]}"
            else:
                shown = f"[{value[0]}, {value[1] if value[1] < 2**62 else 'inf'})"
            parts.append(f"{dimension.name.split(' (')[0]} {shown}")
        return ", ".join(parts) or "everyone"

    def _decide(self, leaf: Node | None) -> np.ndarray:
        if leaf is None or not self.exact_strata:
            return np.full(self.size, UNKNOWN, dtype=np.int8)
        if leaf not in self._decisions:
            self._decisions[leaf] = self.strata.decisions(leaf, self.coordinates)
        return self._decisions[leaf]

    def _kleene(self, node: Node) -> tuple[np.ndarray, np.ndarray]:
        return kleene(node, self._decide)

    def _total(self, target: _Target, sums: Sums, share: float | None, rates: dict) -> _Total:
        """Exact strata + weighted count over undecided strata for one target; with `share` (the weighted
        count's share, None when the fall-back is off) blended with the fall-back."""
        totals, undecided = target.totals, target.undecided
        exact = float(totals[target.true].sum())
        n, big_n = self.taken, self.census.users
        counts = np.maximum(n, 1)
        # the sums are of w y: with w = N_h / n_h this is N_h^2 (1 - f_h) s_h^2 / n_h; with calibrated
        # weights, the weighted values' within-stratum spread (the weights taken as fixed)
        spread = np.where(
            n > 1, (sums.squares - sums.total * sums.total / counts) * counts / np.maximum(n - 1, 1), 0.0
        ).clip(min=0)
        value = float(sums.total[undecided].sum())
        variance = float(((1 - n / np.maximum(big_n, 1)) * spread)[undecided].sum())
        if target.borrowed:  # strata the budget could not reach borrow from their parents
            borrowed = self._synthetic(target.borrowed, totals, target.surface, rates)
            value, variance = value + borrowed.value, variance + borrowed.variance
        if share is None:
            return _Total(exact + value, variance)
        # the fall-back, blended with the weighted count by the support: weight support / min_support
        # on the count, the rest on the parents' rescaled rates
        synthetic = self._synthetic(target.synthetic, totals, target.surface, rates)
        # the synthetic part's error is mostly its model's bias, which its variance does not hold: its
        # mean squared error takes the squared gap to the weighted count (over the same strata) too,
        # an estimate of bias^2 + the count's variance, so on the safe side
        gap = (synthetic.value - value) ** 2
        return _Total(
            exact + share * value + (1 - share) * synthetic.value,
            share**2 * variance + (1 - share) ** 2 * (synthetic.variance + gap),
        )

    def _residuals(self, node: Node, chosen: np.ndarray) -> list[tuple[Node, np.ndarray]]:
        """The `chosen` strata grouped by how the strata decide the node's leaves, each group with its
        residual query (the node with the decided leaves fixed)."""
        own = list(dict.fromkeys(leaves(node)))
        decided = (
            np.stack([self._decide(leaf) for leaf in own], axis=1)
            if own
            else np.zeros((self.size, 0), np.int8)
        )
        patterns, pattern_of = np.unique(decided, axis=0, return_inverse=True)
        pattern_of = pattern_of.reshape(-1)
        found = []
        for p, pattern in enumerate(patterns):
            strata = np.flatnonzero(chosen & (pattern_of == p))
            if not len(strata):
                continue
            fixed = {leaf: bool(d == TRUE) for leaf, d in zip(own, pattern, strict=True) if d != UNKNOWN}
            found.append((substitute(node, lambda leaf, fixed=fixed: fixed.get(leaf)), strata))
        return found

    def _synthetic(self, residuals, totals, surface, rates) -> _Total:
        """Each stratum takes its residual query's rate from coarser strata, rescaled: the root's
        weighted rate R times, for each dimension d, the ratio R_d(c_d(h)) / R of the parent that keeps
        only h's cell on d (when that parent has `min_support` reached sample users; else 1)."""
        value, variance = 0.0, 0.0
        for residual, strata in residuals:
            rate, relvar = self._rate(residual, strata, surface, rates)
            estimate = totals[strata] * rate.clip(0, 1)
            value += float(estimate.sum())
            variance += float((estimate**2 * relvar).sum())
        return _Total(value, variance)

    def _rate(self, node, strata, surface, rates) -> tuple[np.ndarray, np.ndarray]:
        """The residual's rate (share of users, or of impressions on the surface) for each of `strata`,
        with its relative variance: an `and` / `or` that reaches fewer than `min_support` sample users
        takes its terms as independent given the stratum (rate: the product of its terms' rates / one
        minus the product of their complements); any other node is rescaled from its parents along each
        dimension (see `_synthetic`). Computed for every stratum once per node and query."""
        key = ("rate", node, surface)
        if key not in rates:
            rates[key] = self._rate_all(node, surface, rates)
        rate, relvar = rates[key]
        return rate[strata], relvar[strata]

    def _census_rate(self, node: Node) -> np.ndarray | None:
        """A leaf's (or a negated leaf's) share of each stratum's users raked to the census of margins
        (fxrec.audience.margins.leaf_rates); None without a census or for a leaf it does not count."""
        if self.margins is None:
            return None
        negated = isinstance(node, Not)
        leaf = node.item if negated else node
        if leaf not in self._census_rates:
            counts = self.margins.leaf_counts(leaf)
            self._census_rates[leaf] = (
                None
                if counts is None
                else leaf_rates(self.margins, counts, self.coordinates, self.census.users)
            )
        rate = self._census_rates[leaf]
        if rate is None:
            return None
        return 1 - rate if negated else rate

    def _census_counts(self, node: Node) -> np.ndarray | None:
        """A leaf's (or a negated leaf's) users per row of the census of margins, else None."""
        if self.margins is None:
            return None
        negated = isinstance(node, Not)
        counts = self.margins.leaf_counts(node.item if negated else node)
        if counts is None:
            return None
        return self.margins.everyone() - counts if negated else counts

    def _pair_lift(self, items) -> float:
        """For a thin `and` whose first two census leaves the strata take as independent: how far the
        census's count of both (independent only given an age band or country, where one of them lies:
        fxrec.audience.margins.pair_count) is from what the strata's rates give; 1 otherwise."""
        known = [(item, counts) for item in items if (counts := self._census_counts(item)) is not None]
        lift = 1.0
        for i, (a, ca) in enumerate(known):
            for b, cb in known[i + 1 :]:
                both = pair_count(self.margins, ca, cb)
                ra, rb = self._census_rate(a), self._census_rate(b)
                if both is None or ra is None or rb is None:
                    continue
                strata = float((self.census.users * ra * rb).sum())
                lift *= both / strata if strata > 0 else 1.0
        return lift

    def _rate_all(self, node, surface, rates) -> tuple[np.ndarray, np.ndarray]:
        everything = np.arange(self.size)
        if surface is None and (known := self._census_rate(node)) is not None:
            return known, np.zeros(self.size)  # a census rate: no sampling variance
        hit: Cells = rates["cells"][(node, surface)]
        if isinstance(node, And | Or) and hit.rows < self.min_support:
            # too thin together: its terms taken as independent given the stratum
            rate, relvar = np.ones(self.size), np.zeros(self.size)
            for item in node.items:
                part, part_relvar = self._rate(item, everything, surface, rates)
                part = part.clip(0, 1)
                rate, relvar = rate * (part if isinstance(node, And) else 1 - part), relvar + part_relvar
            if isinstance(node, And):
                rate = rate * self._pair_lift(node.items)
            return (rate if isinstance(node, And) else 1 - rate), relvar
        # the reached rows carry y = base: sum (w y)(w base) = sum (w y)^2 = hit.squares
        assert self._bases is not None
        base = self._bases[surface]

        def ratio(numerator, square, denominator, denominator2):
            r = numerator / np.maximum(denominator, 1e-12)
            residual = square - 2 * r * square + r * r * denominator2  # sum (w y - r w base)^2
            return r, residual.clip(min=0) / np.maximum(denominator, 1e-12) ** 2 / np.maximum(r, 1e-12) ** 2

        root, root_relvar = ratio(hit.total, hit.squares, base.total, base.squares)
        rate = np.full(self.size, root)
        relvar = np.full(self.size, root_relvar if root > 0 else 0.0)
        for d in range(self.strata.depth):
            cell_rate, cell_relvar = ratio(
                hit.cell_total[d], hit.cell_squares[d], base.cell_total[d], base.cell_squares[d]
            )
            mine = self.coordinates[:, d]
            ok = (hit.count[d][mine] >= self.min_support) & (base.cell_total[d][mine] > 0) & (root > 0)
            rate = np.where(ok, rate * cell_rate[mine] / max(root, 1e-12), rate)
            relvar = np.where(ok, relvar + cell_relvar[mine], relvar)
        return rate, relvar


class ReachIndex:
    """A stratified sample ready to answer targeting queries, in process: the estimator over the whole
    sample's rows."""

    def __init__(
        self,
        schema: AudienceSchema,
        sample: StratifiedSample,
        min_support: int = 50,
        z: float = 1.96,
        exact_strata: bool = True,
    ):
        self.schema, self.sample = schema, sample
        self.estimator = ReachEstimator.of(
            schema, sample, min_support=min_support, z=z, exact_strata=exact_strata
        )
        self.rows = self.estimator.sample_rows(sample)

    @property
    def min_support(self) -> int:
        return self.estimator.min_support

    def nbytes(self) -> int:
        return self.sample.nbytes()

    def query(self, expr: str | Query, detail: dict | None = None) -> Estimate:
        """The estimate (`detail`, when given, receives which strata fell back: `ReachEstimator.answer`)."""
        return self.estimator.answer(expr, self.rows, detail)


__all__ = ["Estimate", "ReachEstimator", "ReachIndex", "Statistics"]
