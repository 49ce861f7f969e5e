"""The theta-sketch baseline for reach: one Apache DataSketches theta sketch per attribute value.

`ThetaIndex` keeps a sketch of user ids for every value of each categorical field, every year of
each numeric field, every segment of the chosen namespaces, every surface (users with an impression
on it) and the universe (all users). A query is answered with set operations on the sketches: `and`
is an intersection, `or` a union, `not x` the universe minus x (theta A-not-B), surface terms
per surface as in fxrec.audience.query. Unique users only: theta sketches count distinct ids, not
impressions. Their error on an intersection grows with the ratio of the union to the result, which
is why small audiences are hard for them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from datasketches import (
    compact_theta_sketch,
    theta_a_not_b,
    theta_intersection,
    theta_union,
    update_theta_sketch,
)

from fxrec.audience.query import Active, And, Categorical, Const, Not, Numeric, Or, Query, Segment
from fxrec.audience.schema import AudienceSchema, Columns, has_bit


class ThetaIndex:
    def __init__(self, schema: AudienceSchema, lg_k: int, namespaces: tuple[str, ...] = ("interest",)):
        self.schema, self.lg_k, self.namespaces = schema, lg_k, namespaces
        self._building: dict[tuple, update_theta_sketch] = {}
        self.sketches: dict[tuple, compact_theta_sketch] = {}

    def keys(self) -> list[tuple]:
        keys: list[tuple] = [("all",)]
        keys += [("cat", f, v) for f, values in self.schema.categorical.items() for v in range(len(values))]
        keys += [
            ("num", f, v) for f, (low, high) in self.schema.numeric.items() for v in range(low, high + 1)
        ]
        keys += [("seg", ns, k) for ns in self.namespaces for k in range(len(self.schema.segments[ns]))]
        keys += [("surface", s) for s in range(len(self.schema.surfaces))]
        return keys

    def _sketch(self, key: tuple) -> update_theta_sketch:
        if key not in self._building:
            self._building[key] = update_theta_sketch(self.lg_k)
        return self._building[key]

    def _update(self, key: tuple, ids: np.ndarray) -> None:
        sketch = self._sketch(key)
        for user in ids.tolist():
            sketch.update(user)

    def add(self, chunk: Columns) -> None:
        ids = chunk.user_id
        self._update(("all",), ids)
        for field, values in chunk.categorical.items():
            order = np.argsort(values, kind="stable")
            bounds = np.searchsorted(values[order], np.arange(len(self.schema.categorical[field]) + 1))
            for v in range(len(self.schema.categorical[field])):
                self._update(("cat", field, v), ids[order[bounds[v] : bounds[v + 1]]])
        for field, values in chunk.numeric.items():
            for v in np.unique(values).tolist():
                self._update(("num", field, v), ids[values == v])
        for ns in self.namespaces:
            for k in range(len(self.schema.segments[ns])):
                self._update(("seg", ns, k), ids[has_bit(chunk.segments[ns], k)])
        for s in range(chunk.impressions.shape[1]):
            self._update(("surface", s), ids[chunk.impressions[:, s] > 0])

    def finish(self) -> ThetaIndex:
        for key, sketch in self._building.items():
            sketch.trim()
            self.sketches[key] = sketch.compact()
        self._building = {}
        return self

    def nbytes(self) -> int:
        return sum(len(s.serialize()) for s in self.sketches.values())

    @classmethod
    def build(
        cls, schema: AudienceSchema, chunks: Iterable[Columns], lg_k: int, namespaces=("interest",)
    ) -> ThetaIndex:
        index = cls(schema, lg_k, namespaces)
        for chunk in chunks:
            index.add(chunk)
        return index.finish()

    def query(self, query: Query) -> float:
        """Estimated unique users the query reaches."""
        return float(self._eval(query.users(len(self.schema.surfaces))).get_estimate())

    def _get(self, key: tuple) -> compact_theta_sketch:
        found = self.sketches.get(key)
        return found if found is not None else update_theta_sketch(self.lg_k).compact()

    def _union(self, sketches) -> compact_theta_sketch:
        union = theta_union(self.lg_k)
        for sketch in sketches:
            union.update(sketch)
        return union.get_result()

    def _eval(self, node):
        if isinstance(node, And):
            intersection = theta_intersection()
            for item in node.items:
                intersection.update(self._eval(item))
            return intersection.get_result()
        if isinstance(node, Or):
            return self._union(self._eval(item) for item in node.items)
        if isinstance(node, Not):
            return theta_a_not_b().compute(self._get(("all",)), self._eval(node.item))
        if isinstance(node, Const):
            return self._get(("all",)) if node.value else update_theta_sketch(self.lg_k).compact()
        if isinstance(node, Categorical):
            return self._union(self._get(("cat", node.field, v)) for v in sorted(node.codes))
        if isinstance(node, Numeric):
            low, high = self.schema.numeric[node.field]
            return self._union(
                self._get(("num", node.field, v)) for v in range(max(low, node.low), min(high, node.high) + 1)
            )
        if isinstance(node, Segment):
            return self._get(("seg", node.namespace, node.index))
        if isinstance(node, Active):
            return self._get(("surface", node.surface))
        raise TypeError(f"theta sketches cannot answer {node!r}")


def lg_k_for_budget(counts: list[float], budget_bytes: int) -> int:
    """The largest lg_k whose sketches (of sets of these sizes) fit in `budget_bytes` (8 bytes per
    retained hash, at most k of them, plus a small header)."""
    best = 5  # the smallest the library takes
    for lg_k in range(5, 27):
        size = sum(8 * min(c, 2**lg_k) + 24 for c in counts)
        if size <= budget_bytes:
            best = lg_k
    return best
