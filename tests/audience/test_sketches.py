"""The theta-sketch baseline answers targeting queries with set operations (exact while k exceeds the sets)."""

from __future__ import annotations

import pytest

pytest.importorskip("datasketches")

from fxrec.audience.evaluate import reach  # noqa: E402
from fxrec.audience.population import PopulationConfig, audience_schema, generate_chunk  # noqa: E402
from fxrec.audience.query import parse  # noqa: E402
from fxrec.audience.sketches import ThetaIndex, lg_k_for_budget  # noqa: E402

CONFIG = PopulationConfig(users=6000, chunk_size=3000, interests=30)
SCHEMA = audience_schema(CONFIG)


@pytest.mark.parametrize(
    "text",
    [
        "country:US and interest:sports",
        "not surface = feed",
        "age in 18..24 and not country:US",
        "gender:f or surface = video",
    ],
)
def test_theta_sketches_answer_set_operations(text):
    chunks = [generate_chunk(CONFIG, 0), generate_chunk(CONFIG, 1)]
    index = ThetaIndex.build(SCHEMA, chunks, lg_k=14)  # k > the population: exact
    query = parse(text, SCHEMA)
    assert index.query(query) == pytest.approx(sum(int(reach(query, c)[0].sum()) for c in chunks))


def test_lg_k_fits_the_budget():
    assert lg_k_for_budget([1e6] * 100, 100 * (8 * 4096 + 24) + 5000) == 12
