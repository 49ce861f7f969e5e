"""Nothing a client sends produces a 500: schema-driven fuzzing (schemathesis against /openapi.json,
valid and invalid bodies) and property-based requests for real users and items with arbitrary values,
on /v1/score and on /v1/funnel (a server with the funnel, on the tiny funnel run)."""

from __future__ import annotations

import json

import httpx
import pytest
import requests
import schemathesis
from helpers import last_day_events, make_service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from fxrec.serving.server import BackgroundServer


@pytest.fixture(scope="module")
def live(served_run, catalog, tmp_path_factory):
    """A real server on loopback: the fuzzer talks HTTP to it, as a client would."""
    service = make_service(
        served_run, "vm_transfer", tmp_path_factory.mktemp("fuzz"), catalog=catalog, mode="async"
    )
    with BackgroundServer(service) as server:
        yield server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzz_finds_no_server_error(live, mode):
    """schemathesis reads /openapi.json and generates bodies that fit it (positive) or break it
    (negative) for every operation; no answer may be a 5xx, and every answer must match its schema."""
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    session = requests.Session()
    # GET operations take no input: there is nothing to break, so they are fuzzed positively only.
    paths = (
        {"/v1/score": 150}
        if mode is GenerationMode.NEGATIVE
        else {"/v1/score": 150, "/healthz": 3, "/metrics": 3}
    )
    for path, examples in paths.items():
        checks = [not_a_server_error] + ([response_schema_conformance] if path != "/metrics" else [])
        for method in schema[path]:
            _fuzz(schema[path][method], mode, examples, live.url, session, checks)


def _fuzz(operation, mode: GenerationMode, examples: int, url: str, session, checks: list) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        case.call_and_validate(base_url=url, session=session, checks=checks)

    fuzz()


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def known(small_log):
    events = last_day_events(small_log)
    return events["user_id"].unique().to_list()[:20], events["item_id"].unique().to_list()[:50]


def test_known_users_and_items_with_arbitrary_feature_values(live, known, catalog):
    users, items = known
    names = sorted(catalog.roles) + ["nonsense"]

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        user=st.sampled_from(users),
        candidates=st.lists(st.sampled_from(items), min_size=1, max_size=5),
        context=st.dictionaries(st.sampled_from(names), JSON, max_size=6),
        per_candidate=st.dictionaries(st.sampled_from(names), JSON, max_size=3),
        ts=st.none() | st.integers(min_value=-5, max_value=2**41),
    )
    def check(user, candidates, context, per_candidate, ts):
        body = {
            "user_id": user,
            "context": context,
            "candidates": [{"item_id": i, "features": per_candidate} for i in candidates],
        }
        if ts is not None:
            body["ts"] = ts
        response = client.post(
            "/v1/score", content=json.dumps(body), headers={"content-type": "application/json"}
        )
        assert response.status_code < 500, response.text
        assert "error" in response.json() or response.status_code == 200

    with httpx.Client(base_url=live.url) as client:
        check()


@pytest.fixture(scope="module")
def live_funnel(funnel_ran, tmp_path_factory):
    """A real server with POST /v1/funnel on loopback."""
    run, _ = funnel_ran
    service = make_service(run, "vm_feed", tmp_path_factory.mktemp("fuzz_funnel"), mode="vm", funnel=True)
    with BackgroundServer(service) as server:
        yield server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzz_of_the_funnel_finds_no_server_error(live_funnel, mode):
    schema = schemathesis.openapi.from_url(live_funnel.url + "/openapi.json")
    session = requests.Session()
    checks = [not_a_server_error, response_schema_conformance]
    for method in schema["/v1/funnel"]:
        _fuzz(schema["/v1/funnel"][method], mode, 60, live_funnel.url, session, checks)


def test_funnel_requests_for_known_users_with_arbitrary_context(live_funnel, funnel_log):
    events = last_day_events(funnel_log)
    users = events["user_id"].unique().to_list()[:20]
    service = live_funnel.service
    names = sorted(service.catalog.roles) + ["nonsense"]

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        user=st.sampled_from(users) | st.integers(min_value=0, max_value=2**63 - 1),
        context=st.dictionaries(st.sampled_from(names), JSON, max_size=6),
        ts=st.none() | st.integers(min_value=-5, max_value=2**41),
        top=st.none() | st.integers(min_value=-3, max_value=200),
    )
    def check(user, context, ts, top):
        body = {"user_id": user, "context": context}
        if ts is not None:
            body["ts"] = ts
        if top is not None:
            body["top"] = top
        response = client.post(
            "/v1/funnel", content=json.dumps(body), headers={"content-type": "application/json"}
        )
        assert response.status_code < 500, response.text
        assert "error" in response.json() or response.status_code == 200

    with httpx.Client(base_url=live_funnel.url) as client:
        check()
