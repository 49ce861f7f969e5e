"""Multivariate strata for reach estimation, learned from past logs, and Neyman allocation.

A `Stratification` is an ordered list of `Dimension`s (age band, gender, device, the largest countries
with the rest pooled, which surfaces a user is active on, how many impressions they have); a user's
stratum is the tuple of their cells, packed into one int64 key (mixed radix, first dimension most
significant), so dropping the trailing dimensions gives the parent strata the fuzzy fall-back uses.

Each dimension also *decides* query terms over its cells: the age band 18-24 makes `age in 18..30`
true and `age > 40` false for every user in it, a cell of active surfaces decides `Active(video)`.
Kleene (three-valued) logic over those decisions tells, per stratum, whether the query holds for all
of it, none of it, or only the sample can tell (`kleene`).

`learn_stratification` chooses the dimensions greedily on a pilot (a past log of users) and a past
query workload: each step adds the candidate that most lowers the workload's summed relative variance
(users and impressions) under the allocation below, while the strata stay few enough for the budget.
`neyman` allocates a sample of `budget` rows: n_h proportional to N_h * sigma_h (sigma_h^2 the sum over
workload queries of the within-stratum variance over the query's squared total), at least `minimum`
per stratum (or all of a smaller one), at most N_h.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fxrec.audience.query import Active, And, Categorical, Const, Node, Not, Numeric, Or, Query
from fxrec.audience.schema import AudienceSchema, Columns

TRUE, FALSE, UNKNOWN = 1, 0, -1


@dataclass(frozen=True)
class Dimension:
    """One stratification axis. kind: `categorical` (cells: sets of codes of `field`), `band` (cells:
    inclusive ranges of numeric `field`), `surfaces` (cell c: the set of surfaces with impressions is
    the bitmask c + 1), `tier` (cells: [low, high) of total impressions), `segment count` (cells:
    [low, high) of how many segments of namespace `field` a user is in: users in many segments are
    the ones rare segment queries find, so Neyman allocation can oversample them)."""

    name: str
    kind: str
    field: str | None = None
    cells: tuple = ()

    @property
    def size(self) -> int:
        return len(self.cells)

    def coordinate(self, columns: Columns) -> np.ndarray:
        if self.kind == "categorical":
            lookup = np.zeros(max(max(c) for c in self.cells) + 1, dtype=np.int64)
            for i, codes in enumerate(self.cells):
                lookup[list(codes)] = i
            return lookup[columns.categorical[self.field]]
        if self.kind == "band":
            highs = np.array([high for _, high in self.cells])
            return np.searchsorted(highs, columns.numeric[self.field]).clip(max=len(highs) - 1)
        if self.kind == "surfaces":
            active = (columns.impressions > 0).astype(np.int64)
            return (active << np.arange(active.shape[1])).sum(1) - 1
        if self.kind in ("tier", "segment count"):
            edges = np.array([low for low, _ in self.cells[1:]])
            values = (
                columns.total_impressions
                if self.kind == "tier"
                else segment_count(columns.segments[self.field])
            )
            return np.searchsorted(edges, values, side="right")
        raise ValueError(f"unknown dimension kind {self.kind!r}")

    def decide(self, leaf: Node) -> np.ndarray | None:
        """TRUE / FALSE / UNKNOWN per cell for a query leaf this dimension speaks to (else None)."""
        if self.kind == "categorical" and isinstance(leaf, Categorical) and leaf.field == self.field:
            inside = np.array([len(c & leaf.codes) for c in self.cells])
            sizes = np.array([len(c) for c in self.cells])
            return np.where(inside == sizes, TRUE, np.where(inside == 0, FALSE, UNKNOWN)).astype(np.int8)
        if self.kind == "band" and isinstance(leaf, Numeric) and leaf.field == self.field:
            lows, highs = np.array(self.cells).T
            within = (lows >= leaf.low) & (highs <= leaf.high)
            outside = (highs < leaf.low) | (lows > leaf.high)
            return np.where(within, TRUE, np.where(outside, FALSE, UNKNOWN)).astype(np.int8)
        if self.kind == "surfaces" and isinstance(leaf, Active):
            masks = np.arange(1, self.size + 1)
            return np.where((masks >> leaf.surface) & 1, TRUE, FALSE).astype(np.int8)
        return None


@dataclass(frozen=True)
class Stratification:
    dimensions: tuple[Dimension, ...] = ()
    radix: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        sizes = [d.size for d in self.dimensions]
        radix = [int(np.prod(sizes[i + 1 :], dtype=np.int64)) for i in range(len(sizes))]
        object.__setattr__(self, "radix", tuple(radix))

    @property
    def depth(self) -> int:
        return len(self.dimensions)

    def keys(self, columns: Columns) -> np.ndarray:
        key = np.zeros(len(columns), dtype=np.int64)
        for dimension, radix in zip(self.dimensions, self.radix, strict=True):
            key += dimension.coordinate(columns) * radix
        return key

    def coordinates(self, keys: np.ndarray) -> np.ndarray:
        """[len(keys), depth] cells of each key."""
        if not self.dimensions:
            return np.zeros((len(keys), 0), dtype=np.int64)
        return np.stack(
            [(keys // r) % d.size for d, r in zip(self.dimensions, self.radix, strict=True)], axis=1
        )

    def parent(self, keys: np.ndarray, level: int) -> np.ndarray:
        """The keys of the ancestors that keep the first `level` dimensions (level 0: one root)."""
        if level >= self.depth:
            return keys
        return keys // self.radix[level - 1] if level > 0 else np.zeros_like(keys)

    def decisions(self, leaf: Node, coordinates: np.ndarray) -> np.ndarray:
        """TRUE / FALSE / UNKNOWN per stratum (rows of `coordinates`) for one leaf."""
        result = np.full(len(coordinates), UNKNOWN, dtype=np.int8)
        for d, dimension in enumerate(self.dimensions):
            cells = dimension.decide(leaf)
            if cells is not None:
                decided = cells[coordinates[:, d]]
                result = np.where(result == UNKNOWN, decided, result)
        return result

    def describe(self) -> list[str]:
        return [f"{d.name} ({d.size})" for d in self.dimensions]


def kleene(node: Node, decide) -> tuple[np.ndarray, np.ndarray]:
    """(always true, always false) per stratum; `decide(leaf)` gives a leaf's TRUE/FALSE/UNKNOWN array."""
    if isinstance(node, And | Or):
        parts = [kleene(item, decide) for item in node.items]
        trues, falses = np.array([p[0] for p in parts]), np.array([p[1] for p in parts])
        if isinstance(node, And):
            return trues.all(0), falses.any(0)
        return trues.any(0), falses.all(0)
    if isinstance(node, Not):
        t, f = kleene(node.item, decide)
        return f, t
    if isinstance(node, Const):
        n = len(decide(None))
        return np.full(n, node.value), np.full(n, not node.value)
    values = decide(node)
    return values == TRUE, values == FALSE


def neyman(
    population: np.ndarray, sigma: np.ndarray, budget: int, minimum: int, mix: float = 0.0
) -> np.ndarray:
    """Rows per stratum: about budget in all, n_h ~ N_h * sigma_h, at least min(minimum, N_h), at most N_h.
    `mix` in [0, 1] blends in proportional allocation (sigma_h -> (1 - mix) sigma_h / mean sigma + mix),
    a guard for the queries the past workload did not foresee."""
    population = population.astype(np.int64)
    total = int(population.sum())
    if budget >= total:
        return population.copy()
    floor = np.minimum(minimum, population)
    if floor.sum() >= budget:  # the minimum alone fills the budget: one per stratum, if that fits
        floor = np.minimum(1, population)
        if floor.sum() >= budget:  # not even that: proportional (some strata go unsampled)
            return _round(population * budget / total, population, budget)
    sigma = np.where(sigma > 0, sigma, 0.0)
    mean = (population * sigma).sum() / max(total, 1)
    if mix > 0 and mean > 0:
        sigma = (1 - mix) * sigma / mean + mix
    weight = population * sigma
    if weight.sum() == 0:
        weight = population.astype(float)

    def size(c: float) -> np.ndarray:
        return np.clip(c * weight, floor, population)

    low, high = 0.0, 1.0
    while size(high).sum() < budget:
        high *= 2
        if high > 1e30:
            break
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if size(mid).sum() < budget else (low, mid)
    return _round(size(high), population, budget)


def proportional(population: np.ndarray, budget: int) -> np.ndarray:
    total = int(population.sum())
    return population.copy() if budget >= total else _round(population * budget / total, population, budget)


def _round(sizes: np.ndarray, population: np.ndarray, budget: int) -> np.ndarray:
    whole = np.floor(sizes).astype(np.int64)
    left = int(budget - whole.sum())
    if left > 0:
        room = whole < population
        order = np.argsort(-(sizes - whole) * room, kind="stable")[:left]
        whole[order[room[order]]] += 1
    return np.minimum(whole, population)


# Learning the strata from a pilot and a past workload.
AGE_BANDS = ((13, 17), (18, 24), (25, 34), (35, 44), (45, 54), (55, 64), (65, 120))


def segment_count(bits: np.ndarray) -> np.ndarray:
    """How many segments each user is in (popcount of the bitset)."""
    return np.unpackbits(np.ascontiguousarray(bits).view(np.uint8), axis=1).sum(1)


def candidate_dimensions(
    schema: AudienceSchema, pilot: Columns, top_values: int = 15, tiers: int = 4, segment_counts: bool = False
) -> list[Dimension]:
    """What the greedy search may stratify on: advertiser age bands, each small categorical field whole,
    the `top_values` commonest values of a larger one (the rest pooled), active surfaces, impression
    tiers, and (`segment_counts`) tiers of how many segments of the first namespace a user is in (off by
    default: on the simulated population it helped large queries and hurt the smallest)."""
    found = []
    if "age" in schema.numeric:
        found.append(Dimension("age band", "band", "age", AGE_BANDS))
    for name, values in schema.categorical.items():
        counts = np.bincount(pilot.categorical[name], minlength=len(values))
        order = [int(v) for v in np.argsort(-counts, kind="stable")]
        if len(values) <= top_values:
            found.append(
                Dimension(name, "categorical", name, tuple(frozenset({v}) for v in range(len(values))))
            )
        elif len(values) <= 4 * top_values:
            cells = tuple(frozenset({v}) for v in order[:top_values]) + (frozenset(order[top_values:]),)
            found.append(Dimension(f"{name} (top {top_values})", "categorical", name, cells))
    if len(schema.surfaces) > 1:
        found.append(
            Dimension("active surfaces", "surfaces", None, tuple(range(2 ** len(schema.surfaces) - 1)))
        )
    counted = list(schema.segments)[:1] if segment_counts else []
    for kind, column, values in [("tier", None, pilot.total_impressions)] + [
        ("segment count", namespace, segment_count(pilot.segments[namespace])) for namespace in counted
    ]:
        edges = np.unique(np.quantile(values, np.linspace(0, 1, tiers + 1)[1:-1]).astype(np.int64) + 1)
        bounds = [0, *edges.tolist(), 2**62]
        cells = tuple(zip(bounds[:-1], bounds[1:], strict=True))
        name = "impression tier" if kind == "tier" else f"{column} count"
        found.append(Dimension(f"{name} ({len(cells)})", kind, column, cells))
    return found


@dataclass
class Workload:
    """A past query workload evaluated on a pilot: per query, the per-user reach and impressions."""

    users: list[np.ndarray]
    impressions: list[np.ndarray]

    @classmethod
    def evaluate(cls, queries: list[Query], pilot: Columns) -> Workload:
        from fxrec.audience.evaluate import reach

        users, impressions = [], []
        for query in queries:
            reached, imps = reach(query, pilot)
            if reached.any():
                users.append(reached.astype(np.float64))
                impressions.append(imps.astype(np.float64))
        return cls(users, impressions)


def stratum_sigma(ids: np.ndarray, strata: int, workload: Workload) -> np.ndarray:
    """sigma_h: sqrt of the summed within-stratum variance of each workload target over its total^2."""
    count = np.bincount(ids, minlength=strata).astype(float)
    total = np.zeros(strata)
    for y in [*workload.users, *workload.impressions]:
        s1 = np.bincount(ids, weights=y, minlength=strata)
        s2 = np.bincount(ids, weights=y * y, minlength=strata)
        variance = np.where(count > 1, (s2 - s1 * s1 / np.maximum(count, 1)) / np.maximum(count - 1, 1), 0.0)
        total += variance.clip(min=0) / max(y.sum(), 1.0) ** 2
    return np.sqrt(total)


def objective(
    strata: Stratification, pilot: Columns, workload: Workload, population: int, budget: int, minimum: int
) -> tuple[float, int]:
    """The workload's summed relative variance under Neyman allocation, and the number of strata."""
    keys = strata.keys(pilot)
    _, ids = np.unique(keys, return_inverse=True)
    h = int(ids.max()) + 1
    sizes = np.bincount(ids, minlength=h) * (population / len(pilot))
    sigma = stratum_sigma(ids, h, workload)
    taken = neyman(np.maximum(np.round(sizes).astype(np.int64), 1), sigma, budget, minimum)
    return float((sizes**2 * sigma**2 / np.maximum(taken, 1)).sum()), h


def learn_stratification(
    schema: AudienceSchema,
    pilot: Columns,
    queries: list[Query],
    population: int,
    budget: int,
    minimum: int,
    max_strata: int | None = None,
    candidates: list[Dimension] | None = None,
) -> Stratification:
    """Greedy choice of dimensions on a pilot and past queries (see the module docstring)."""
    workload = Workload.evaluate(queries, pilot)
    max_strata = max_strata or max(1, budget // (4 * minimum))
    remaining = list(candidates or candidate_dimensions(schema, pilot))
    chosen: list[Dimension] = []
    best, _ = objective(Stratification(), pilot, workload, population, budget, minimum)
    while remaining:
        scored = []
        for dimension in remaining:
            trial = Stratification((*chosen, dimension))
            value, strata = objective(trial, pilot, workload, population, budget, minimum)
            if strata <= max_strata:
                scored.append((value, dimension))
        if not scored:
            break
        value, dimension = min(scored, key=lambda item: item[0])
        if value > 0.98 * best:
            break
        chosen.append(dimension)
        remaining.remove(dimension)
        best = value
    return Stratification(tuple(chosen))
