"""Random targeting queries, as advertisers write them: the workload that strata are learned from and
that the reach benchmark measures on.

Each query is a conjunction of 1-4 conditions (sometimes one of them negated, sometimes two of them
or-ed), drawn from: a country (any: small ones make small audiences), a region, an age band or range,
a gender, a device, one interest or a pair of them (uniform over the long tail), a surface. Reach
therefore spans from nearly everyone down to a few hundred users in ten million.
"""

from __future__ import annotations

import numpy as np

from fxrec.audience.query import Query, parse
from fxrec.audience.schema import AudienceSchema
from fxrec.audience.strata import AGE_BANDS


def _condition(rng: np.random.Generator, schema: AudienceSchema) -> str:
    kinds = [
        "country",
        "age",
        "interest",
        "interest",
        "gender",
        "device",
        "surface",
        "region",
        "interest_pair",
    ]
    kind = kinds[rng.integers(len(kinds))]
    if kind in ("country", "region", "gender", "device") and kind in schema.categorical:
        values = schema.categorical[kind]
        return f"{kind}:{values[rng.integers(len(values))]}"
    if kind == "age" and "age" in schema.numeric:
        if rng.random() < 0.6:
            low, high = AGE_BANDS[rng.integers(1, len(AGE_BANDS) - 1)]
        else:
            low = int(rng.integers(16, 60))
            high = low + int(rng.integers(3, 15))
        return f"age in {low}..{high}"
    if kind.startswith("interest") and "interest" in schema.segments:
        names = schema.segments["interest"]
        if kind == "interest_pair":
            a, b = rng.choice(len(names), size=2, replace=False)
            return f"(interest:{names[a]} or interest:{names[b]})"
        return f"interest:{names[rng.integers(len(names))]}"
    if kind == "surface":
        return f"surface = {schema.surfaces[rng.integers(len(schema.surfaces))]}"
    return (
        f"gender:{schema.categorical['gender'][0]}"
        if "gender" in schema.categorical
        else "surface = " + schema.surfaces[0]
    )


def random_queries(schema: AudienceSchema, count: int, seed: int) -> list[Query]:
    rng = np.random.default_rng(seed)
    queries = []
    while len(queries) < count:
        terms = [_condition(rng, schema) for _ in range(int(rng.integers(1, 5)))]
        if len(terms) > 1 and rng.random() < 0.25:
            terms[-1] = f"not {terms[-1]}"
        text = " and ".join(dict.fromkeys(terms))
        queries.append(parse(text, schema))
    return queries
