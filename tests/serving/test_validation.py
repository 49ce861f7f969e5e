"""Bad input of any kind gets a 4xx that says what is wrong; good input scores like training did."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import last_day_events, make_service, request_for

from fxrec.data.batches import EventFrame
from fxrec.serving.app import create_app
from fxrec.serving.catalog import FeatureRole


@pytest.fixture(scope="module")
def client(served_run, catalog, tmp_path_factory):
    service = make_service(
        served_run, "vm_plain", tmp_path_factory.mktemp("validation"), catalog=catalog, mode="vm"
    )
    with TestClient(create_app(service, max_body_bytes=64 * 1024)) as client:
        client.service = service  # type: ignore[attr-defined]
        yield client


@pytest.fixture(scope="module")
def good(catalog, small_log):
    return request_for(catalog, last_day_events(small_log).row(0, named=True))


def test_roles_are_inferred_from_the_log(catalog):
    roles = catalog.roles
    assert roles["device"] is FeatureRole.user and roles["user_segments"] is FeatureRole.user
    assert roles["ad_format"] is FeatureRole.item and roles["bid"] is FeatureRole.item
    assert roles["surface_id"] is FeatureRole.surface
    assert roles["hour"] is FeatureRole.context and roles["position"] is FeatureRole.context
    assert "position" not in catalog.surface_context["stories"]  # stories has no slots


def _error(client, body, status: int, *fragments: str, **kw) -> str:
    response = (
        client.post("/v1/score", json=body, **kw) if body is not None else client.post("/v1/score", **kw)
    )
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unknown_user_and_unknown_item(client, good):
    _error(client, {**good, "user_id": 10**12}, 404, "unknown user_id 1000000000000")
    _error(
        client,
        {**good, "candidates": [{"item_id": 10**12}]},
        404,
        "unknown item_id(s) 1000000000000",
        "item features",
    )


def test_new_user_and_item_are_scored_when_their_features_are_sent(client, good, catalog):
    user_side = {f: 1 for f in ("device", "age_bucket")}
    item_side = {"advertiser_id": 3, "ad_format": 1, "ad_category": 2, "bid": 1.5, "ad_age_days": 0.0}
    body = {
        **good,
        "user_id": 10**12,
        "context": {**good["context"], **user_side},
        "candidates": [{"item_id": 10**12, "features": item_side}],
    }
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text


def test_missing_extra_and_misplaced_features(client, good):
    context = dict(good["context"])
    context.pop("hour")
    _error(client, {**good, "context": context}, 422, "missing feature(s) ['hour']")
    _error(client, {**good, "context": {**good["context"], "colour": 3}}, 422, "unknown feature(s) 'colour'")
    _error(client, {**good, "context": {**good["context"], "user_id": 3}}, 422, "top-level fields")
    _error(client, {**good, "surprise": 1}, 422, "surprise")


def test_wrong_types_nan_and_ranges(client, good):
    _error(client, {**good, "context": {**good["context"], "hour": "noon"}}, 422, "context.hour", "'noon'")
    _error(
        client,
        {**good, "context": {**good["context"], "hour": 2.5}},
        422,
        "context.hour",
        "sparse feature 'hour'",
    )
    _error(client, {**good, "context": {**good["context"], "hour": 2**70}}, 422, "context.hour")
    _error(
        client,
        {**good, "candidates": [{"item_id": good["candidates"][0]["item_id"], "features": {"bid": [1]}}]},
        422,
        "dense feature 'bid'",
    )
    _error(client, {**good, "user_id": "7"}, 422, "user_id")
    _error(client, {**good, "user_id": -1}, 422, "user_id")
    _error(client, {**good, "surface": "billboard"}, 422, "'billboard' is not served")
    nan = b'{"user_id": 1, "context": {"hour": NaN}, "candidates": [{"item_id": 1}]}'
    _error(client, None, 422, "context.hour", content=nan, headers={"content-type": "application/json"})
    infinite = b'{"user_id": 1, "context": {"bid": Infinity}, "candidates": [{"item_id": 1}]}'
    _error(client, None, 422, "context.bid", content=infinite, headers={"content-type": "application/json"})


def test_sizes_and_bodies(client, good):
    _error(client, {**good, "candidates": []}, 422, "candidates")
    _error(client, {**good, "candidates": good["candidates"] * 501}, 422, "candidates")
    _error(
        client,
        None,
        413,
        "exceeds the limit",
        content=b"{" + b" " * (70 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    _error(
        client,
        None,
        400,
        "not valid JSON",
        content=b"[" * 20_000,
        headers={"content-type": "application/json"},
    )
    _error(
        client,
        None,
        422,
        "invalid request",
        content=b"\xff\xfe",
        headers={"content-type": "application/json"},
    )
    _error(
        client,
        None,
        422,
        "invalid request",
        content=b"user_id=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )


def test_served_scores_match_the_model_on_the_logged_rows(client, small_log, catalog):
    """Serving builds the same inputs as training: for last-day events, the server's score equals the
    VM's prediction on the logged row (user and item features from the catalog, context sent)."""
    service = client.service
    events = last_day_events(small_log).head(20)
    model = service.vm.model
    features = [small_log.spec.feature(f) for f in model.features]
    with torch.no_grad():
        expected = torch.sigmoid(
            model(EventFrame(events.to_arrow(), small_log.spec, features).batch(0, events.height)).logits[
                "click"
            ]
        ).numpy()
    served = []
    for event in events.rows(named=True):
        response = client.post("/v1/score", json=request_for(catalog, event))
        assert response.status_code == 200, response.text
        served.append(response.json()["candidates"][0]["scores"]["click"])
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6)


def test_healthz_and_metrics(client, good):
    client.post("/v1/score", json=good)
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["vm"] == "vm_plain"
    text = client.get("/metrics").text
    assert "fxrec_request_latency_seconds_bucket" in text and 'fxrec_requests_total{status="422"}' in text
