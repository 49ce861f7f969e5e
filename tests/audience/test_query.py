"""The targeting language: its grammar (precedence, every form of condition), errors that point at the
offending token, and evaluation against a hand count."""

from __future__ import annotations

import numpy as np
import pytest

from fxrec.audience.evaluate import reach
from fxrec.audience.population import PopulationConfig, audience_schema, generate_chunk
from fxrec.audience.query import And, Categorical, Not, Numeric, Or, QueryError, Segment, Surface, parse
from fxrec.audience.schema import has_bit

CONFIG = PopulationConfig(users=5000, chunk_size=5000, interests=30)
SCHEMA = audience_schema(CONFIG)
US, GB = SCHEMA.categorical["country"].index("US"), SCHEMA.categorical["country"].index("GB")
SPORTS, OUTDOOR = 0, 1
VIDEO = SCHEMA.surfaces.index("video")


def test_the_example_query():
    query = parse(
        "age in 18..24 and (interest:sports or interest:outdoor) and not country:US and surface = video",
        SCHEMA,
    )
    assert query.node == And(
        (
            Numeric("age", 18, 24),
            Or((Segment("interest", SPORTS), Segment("interest", OUTDOOR))),
            Not(Categorical("country", frozenset({US}))),
            Surface(frozenset({VIDEO})),
        )
    )


@pytest.mark.parametrize(
    "text, node",
    [
        (
            "not country:US and country:GB or gender:f",
            Or(
                (
                    And(
                        (
                            Not(Categorical("country", frozenset({US}))),
                            Categorical("country", frozenset({GB})),
                        )
                    ),
                    Categorical("gender", frozenset({0})),
                )
            ),
        ),
        (
            "NOT (country:us OR country:GB)",
            Not(Or((Categorical("country", frozenset({US})), Categorical("country", frozenset({GB}))))),
        ),
        ("country != US", Not(Categorical("country", frozenset({US})))),
        (
            "country in {US, GB}",
            Or((Categorical("country", frozenset({US})), Categorical("country", frozenset({GB})))),
        ),
        ("age >= 30", Numeric("age", 30, 2**31)),
        ("age < 30", Numeric("age", -(2**31), 29)),
        ("age == 30", Numeric("age", 30, 30)),
        ('dmp_b:"sports"', Segment("dmp_b", SPORTS)),
        ("region:US-2", Categorical("region", frozenset({1}))),
        ("surface:video", Surface(frozenset({VIDEO}))),
        ("not not interest:outdoor", Not(Not(Segment("interest", OUTDOOR)))),
    ],
)
def test_grammar(text, node):
    assert parse(text, SCHEMA).node == node


@pytest.mark.parametrize(
    "text, column, width, reason",
    [
        ("age in 18..24 and and interest:sports", 19, 3, "unexpected 'and'"),
        ("countri:US", 1, 7, "unknown field 'countri'"),
        ("country:XX", 9, 2, "unknown country 'XX'"),
        ("interest:sportz or country:US", 10, 6, "unknown interest segment 'sportz'"),
        ("country >= US", 9, 2, "'>=' needs a numeric field"),
        ("age in 30..20", 8, 2, "empty range 30..20"),
        ("age = young", 7, 5, "'age' takes whole numbers"),
        ("country in 1..3", 1, 7, "'country' is not numeric"),
        ("(country:US", 12, 1, "the query ends too early; expected ')'"),
        ("country:US $", 12, 1, "unexpected character '$'"),
        ("country:US)", 11, 1, "unexpected ')'"),
        ("  ", 1, 1, "empty query"),
    ],
)
def test_errors_point_at_the_token(text, column, width, reason):
    with pytest.raises(QueryError) as caught:
        parse(text, SCHEMA)
    error = caught.value
    assert error.column == column and error.reason.startswith(reason)
    _, shown, caret = str(error).split("\n")
    assert shown.strip() == text.strip() or not text.strip()
    assert caret == "  " + " " * (column - 1) + "^" * width


def test_evaluation_matches_a_hand_count():
    users = generate_chunk(CONFIG, 0)
    query = parse(
        "age in 18..24 and (interest:sports or interest:outdoor) and not country:US and surface = video",
        SCHEMA,
    )
    reached, impressions = reach(query, users)
    age, country = users.numeric["age"], users.categorical["country"]
    interest = has_bit(users.segments["interest"], SPORTS) | has_bit(users.segments["interest"], OUTDOOR)
    on_video = users.impressions[:, VIDEO]
    expected = (age >= 18) & (age <= 24) & interest & (country != US)
    assert np.array_equal(reached, expected & (on_video > 0))
    assert np.array_equal(impressions, np.where(expected, on_video, 0))
    assert 0 < reached.sum() < len(users)


def test_negated_surface_reaches_through_the_other_surfaces():
    users = generate_chunk(CONFIG, 0)
    reached, impressions = reach(parse("not surface = video", SCHEMA), users)
    others = np.delete(users.impressions, VIDEO, axis=1)
    assert np.array_equal(reached, others.sum(1) > 0)
    assert np.array_equal(impressions, others.sum(1))
    everyone, all_impressions = reach(parse("country:US or not country:US", SCHEMA), users)
    assert everyone.all() and all_impressions.sum() == users.impressions.sum()


def test_a_keyword_can_be_a_value():
    india = SCHEMA.categorical["country"].index("IN")
    assert parse("country:IN", SCHEMA).node == Categorical("country", frozenset({india}))
    assert parse("country in {in, US}", SCHEMA).node == Or(
        (Categorical("country", frozenset({india})), Categorical("country", frozenset({US})))
    )
