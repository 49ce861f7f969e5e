"""A small reach index and quality table for the audience API tests, and a grammar-aware generator of
targeting queries (valid ones from the index's schema, broken ones by mutating them)."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
from hypothesis import strategies as st

from fxrec.audience.population import PopulationConfig, audience_schema, iter_chunks, past_users

CONFIG = PopulationConfig(users=20_000, chunk_size=10_000, interests=40)
SCHEMA = audience_schema(CONFIG)


@lru_cache(maxsize=1)
def small_index():
    """A ReachIndex over 20,000 simulated users with a 2,000-user sample (built once, ~2 s)."""
    from fxrec.audience.build import build_reach_index
    from fxrec.audience.workload import random_queries

    return build_reach_index(
        SCHEMA,
        lambda: iter_chunks(CONFIG),
        past_users(CONFIG, 5000),
        random_queries(SCHEMA, 100, seed=1),
        budget=2000,
        population=CONFIG.users,
    )


@lru_cache(maxsize=1)
def quality_report() -> dict:
    """quality.json's content from 12 noiseless campaigns: dmp_a (precise) ranks above dmp_b and dmp_c;
    every campaign targeted dmp_c's travel label, so that segment is skipped."""
    from fxrec.audience.campaigns import CampaignAggregates
    from fxrec.audience.quality_report import assess

    rng = np.random.default_rng(3)
    campaigns = 12
    agency = rng.uniform(0.05, 0.5, (campaigns, 2))
    recall, fpr = np.array([0.6, 0.8, 0.5]), np.array([0.01, 0.05, 0.1])
    labels = recall[:, None, None] * agency[None] + fpr[:, None, None] * (1 - agency[None])
    targeted = np.zeros((3, campaigns, 2), dtype=bool)
    targeted[2, :, 1] = True
    aggregates = CampaignAggregates(
        ["sports", "travel"],
        ["dmp_a", "dmp_b", "dmp_c"],
        ["country:US"] * campaigns,
        np.full(campaigns, 1000),
        np.full(campaigns, 5000),
        agency,
        labels,
        targeted,
        20_000,
        np.full((3, 2), 0.1),
    )
    return json.loads(json.dumps(assess(aggregates), default=float))  # as read back from quality.json


def _values(field: str) -> list[str]:
    if field in SCHEMA.categorical:
        return list(SCHEMA.categorical[field])
    if field in SCHEMA.segments:
        return list(SCHEMA.segments[field])
    return list(SCHEMA.surfaces)


def _condition() -> st.SearchStrategy[str]:
    named = st.sampled_from([*SCHEMA.categorical, *SCHEMA.segments, "surface"]).flatmap(
        lambda field: st.tuples(
            st.just(field), st.sampled_from(_values(field)), st.sampled_from([":", " = ", " != "])
        )
    )
    tag = named.map(
        lambda t: f"{t[0]}{t[2]}{t[1]}" if t[0] != "surface" or t[2] != ":" else f"surface = {t[1]}"
    )
    members = st.sampled_from(list(SCHEMA.categorical)).flatmap(
        lambda field: st.lists(st.sampled_from(_values(field)), min_size=1, max_size=4).map(
            lambda values: f"{field} in {{{', '.join(values)}}}"
        )
    )
    low, high = SCHEMA.numeric["age"]
    ages = st.integers(low, high)
    age = st.one_of(
        st.tuples(ages, ages).map(lambda t: f"age in {min(t)}..{max(t)}"),
        st.tuples(st.sampled_from(["<", "<=", ">", ">=", "=", "!="]), ages).map(
            lambda t: f"age {t[0]} {t[1]}"
        ),
    )
    return st.one_of(tag, members, age)


VALID_QUERIES = st.recursive(
    _condition(),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(" and ".join),
        st.lists(inner, min_size=2, max_size=3).map(lambda items: "(" + " or ".join(items) + ")"),
        inner.map(lambda item: f"not {item}"),
    ),
    max_leaves=8,
)

_NOISE = st.sampled_from(
    [
        "(",
        ")",
        "and",
        "or",
        "not",
        "in",
        "..",
        "{",
        "}",
        ",",
        ":",
        "=",
        "<",
        "!",
        '"',
        "agee",
        "US",
        "7",
        "é",
        "\x00",
        " ",
    ]
)


@st.composite
def _mutated(draw) -> str:
    """A valid query with a few edits: a token inserted, a span deleted, or the text cut short."""
    text = draw(VALID_QUERIES)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "cut"]))
        if edit == "insert":
            text = text[:at] + draw(_NOISE) + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 6)) :]
        else:
            text = text[:at]
    return text


QUERIES = st.one_of(VALID_QUERIES, _mutated(), st.text(max_size=40))
