"""Nothing a client sends the audience API produces a 500, as for the scoring API (test_fuzz.py):
schema-driven fuzzing of both endpoints (schemathesis, valid and invalid bodies), random and garbled
bodies, bodies over the limit, and targeting queries from a grammar-aware generator -- valid ones
answer like the index, broken ones are 422 with a caret under a column of the query."""

from __future__ import annotations

import json

import httpx
import pytest
import requests
import schemathesis
from audience_helpers import QUERIES, VALID_QUERIES, quality_report, small_index
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from fxrec.serving.audience import AudienceService, create_audience_app
from fxrec.serving.audience_quality import QualityTable
from fxrec.serving.server import BackgroundServer

LIMIT = 64 * 1024
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def live():
    """A real audience server on loopback: the fuzzers talk HTTP to it, as a client would."""
    service = AudienceService(
        small_index(), QualityTable.from_report(quality_report()), describe={"kind": "in-process"}
    )
    with BackgroundServer(service, app=create_audience_app(service, max_body_bytes=LIMIT)) as server:
        yield server


@pytest.fixture(scope="module")
def client(live):
    with httpx.Client(base_url=live.url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzz_finds_no_server_error(live, mode):
    """schemathesis reads /openapi.json and generates bodies that fit it (positive) or break it
    (negative) for both endpoints; no answer may be a 5xx, and every answer must match its schema."""
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    session = requests.Session()
    paths = {"/v1/reach": 100, "/v1/quality": 60}
    if mode is GenerationMode.POSITIVE:  # GETs take no input: nothing to break
        paths |= {"/healthz": 3, "/metrics": 3}
    for path, examples in paths.items():
        checks = [not_a_server_error] + ([response_schema_conformance] if path != "/metrics" else [])
        for method in schema[path]:
            _fuzz(schema[path][method], mode, examples, live.url, session, checks)


def _fuzz(operation, mode: GenerationMode, examples: int, url: str, session, checks: list) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        case.call_and_validate(base_url=url, session=session, checks=checks)

    fuzz()


def _post(client: httpx.Client, path: str, content: bytes, content_type: str = "application/json"):
    response = client.post(path, content=content, headers={"content-type": content_type})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert "error" in response.json(), response.text
    return response


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(["query", "surface", "request_id", "provider", "segment", "extra"])


@st.composite
def _garbled(draw) -> bytes:
    """A valid body with bytes flipped, cut or inserted."""
    body = bytearray(json.dumps({"query": draw(VALID_QUERIES), "surface": "feed"}).encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        edit = draw(st.sampled_from(["flip", "cut", "insert"]))
        if edit == "flip" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif edit == "cut":
            del body[at:]
        else:
            body[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(body)


def test_random_and_garbled_bodies(client):
    @settings(FUZZ, max_examples=150)
    @given(
        path=st.sampled_from(["/v1/reach", "/v1/quality"]),
        body=st.one_of(
            st.binary(max_size=200),
            JSON.map(lambda v: json.dumps(v).encode()),
            st.dictionaries(KEYS, JSON, max_size=4).map(lambda v: json.dumps(v).encode()),
            _garbled(),
        ),
        content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
    )
    def check(path, body, content_type):
        _post(client, path, body, content_type)

    check()


def test_huge_bodies_are_413_declared_or_streamed(client, live):
    huge = json.dumps({"query": "country:US or " * (LIMIT // 10)}).encode()
    assert len(huge) > LIMIT
    for path in ("/v1/reach", "/v1/quality"):
        assert _post(client, path, huge).status_code == 413

        def chunks():  # no Content-Length: the limit holds while the body streams in
            for start in range(0, len(huge), 4096):
                yield huge[start : start + 4096]

        streamed = client.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "exceeds the limit" in streamed.json()["error"]
    long_query = json.dumps({"query": "country:US or " * 2000}).encode()  # under the body limit
    assert len(long_query) < LIMIT
    assert "at most 2000 characters" in _post(client, "/v1/reach", long_query).json()["error"]


def test_grammar_aware_queries_answer_or_point_at_a_column(client):
    index = small_index()

    @settings(FUZZ, max_examples=300)
    @given(query=QUERIES, surface=st.none() | st.sampled_from(["feed", "video", "tv"]))
    def check(query, surface):
        body = {"query": query} if surface is None else {"query": query, "surface": surface}
        response = _post(client, "/v1/reach", json.dumps(body).encode())
        answer = response.json()
        assert response.status_code in (200, 422), response.text
        if response.status_code == 200:
            users = answer["users"]
            assert 0 <= users["low"] <= users["estimate"] <= users["high"]
            assert answer["impressions"]["estimate"] >= 0
        elif answer.get("column") is not None:  # a query error: the caret sits under the query
            column, text, caret = answer["column"], answer["details"][1], answer["caret"]
            assert 1 <= column <= len(text) + 1 and caret.index("^") == column - 1
            assert len(text) == len(query)

    check()

    @settings(FUZZ, max_examples=100)
    @given(query=VALID_QUERIES)
    def valid(query):
        response = _post(client, "/v1/reach", json.dumps({"query": query}).encode())
        assert response.status_code == 200, response.text
        expected = index.query(query)
        assert response.json()["users"]["estimate"] == pytest.approx(expected.users)
        assert response.json()["impressions"]["estimate"] == pytest.approx(expected.impressions)

    valid()
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics
