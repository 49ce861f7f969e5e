"""The audience API: reach answers are the index's, a bad query is 422 with its column and caret, quality
rows filter by provider and segment, every status is counted in /metrics, an index that fails is 503."""

from __future__ import annotations

import json

import pytest
from audience_helpers import SCHEMA, quality_report, small_index
from fastapi.testclient import TestClient

from fxrec.errors import InputError
from fxrec.serving.audience import AudienceService, create_audience_app
from fxrec.serving.audience_quality import QualityTable

QUERY = "age in 18..24 and (interest:sports or interest:outdoor) and not country:US"


@pytest.fixture(scope="module")
def client():
    service = AudienceService(
        small_index(), QualityTable.from_report(quality_report()), describe={"kind": "in-process"}
    )
    with TestClient(create_audience_app(service, max_body_bytes=64 * 1024)) as client:
        yield client


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "details"}
    return body


def test_reach_answers_what_the_index_answers(client):
    response = client.post("/v1/reach", json={"query": QUERY, "request_id": "r1"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = small_index().query(QUERY)
    assert body["request_id"] == "r1" and body["query"] == QUERY and body["surface"] is None
    assert body["users"] == {
        "estimate": expected.users,
        "low": expected.users_low,
        "high": expected.users_high,
    }
    assert body["impressions"]["estimate"] == expected.impressions
    assert body["users"]["low"] <= body["users"]["estimate"] <= body["users"]["high"]
    assert body["confidence"] == pytest.approx(0.95, abs=1e-3)
    assert body["support"] == expected.support and body["fell_back"] is expected.fallback
    assert set(body["timings_ms"]) == {"parse", "query"}


def test_surface_restricts_the_query_like_a_surface_term(client):
    restricted = client.post("/v1/reach", json={"query": "country:US", "surface": "Video"}).json()
    written = client.post("/v1/reach", json={"query": "country:US and surface = video"}).json()
    for key in ("users", "impressions", "support", "fell_back", "exact"):
        assert restricted[key] == written[key]
    everywhere = client.post("/v1/reach", json={"query": "country:US"}).json()
    assert restricted["impressions"]["estimate"] < everywhere["impressions"]["estimate"]
    body = _error(client.post("/v1/reach", json={"query": "country:US", "surface": "tv"}), 422)
    assert "unknown surface 'tv'" in body["error"] and "feed" in body["details"][0]


def test_a_fallback_answer_says_so(client):
    rare = " and ".join(f"interest:{name}" for name in SCHEMA.segments["interest"][-3:])
    body = client.post("/v1/reach", json={"query": rare}).json()
    assert body["fell_back"] is True and body["support"] < small_index().min_support
    strata = body["fallback_strata"]
    assert 0 < len(strata) <= 10 and body["fallback_strata_count"] >= len(strata)
    assert all(s["stratum"].startswith("country ") and s["users"] >= s["sampled"] >= 0 for s in strata)


@pytest.mark.parametrize(
    ("query", "column", "width", "reason"),
    [
        ("age in 18..24 and intrest:sports", 19, 7, "unknown field 'intrest'"),
        ("country:XX or gender:f", 9, 2, "unknown country 'XX'"),
        ("country:US and (", 17, 1, "ends too early"),
        ("age in 30..20", 8, 2, "empty range"),
        ("country:US  & device:ios", 13, 1, "unexpected character '&'"),
        ("   ", 1, 1, "empty query"),
    ],
)
def test_a_query_error_carries_its_column_and_caret(client, query, column, width, reason):
    body = _error(client.post("/v1/reach", json={"query": query}), 422)
    assert reason in body["error"] and f"column {column}" in body["error"]
    assert body["column"] == column
    assert body["caret"] == " " * (column - 1) + "^" * width
    assert body["details"] == [body["details"][0], query, body["caret"]]
    assert body["details"][0].startswith(f"query: column {column}: ") and reason in body["details"][0]


def test_a_multiline_query_keeps_its_caret_aligned(client):
    body = _error(client.post("/v1/reach", json={"query": "country:US\nand\tintrest:sports"}), 422)
    query, caret = body["details"][1], body["details"][2]
    assert "\n" not in query and query[caret.index("^") :].startswith("intrest")


def test_schema_errors_bodies_and_sizes(client):
    body = _error(client.post("/v1/reach", json={"quer": "country:US"}), 422)
    assert body["details"] == ["query: Field required", "quer: Extra inputs are not permitted"]
    _error(client.post("/v1/reach", json={"query": 7}), 422)
    _error(client.post("/v1/reach", json={"query": "country:US " * 200}), 422)  # over 2000 characters
    headers = {"content-type": "application/json"}
    body = _error(client.post("/v1/reach", content=b"[" * 20_000, headers=headers), 400)
    assert "not valid JSON" in body["error"]
    big = json.dumps({"query": "x" * (70 * 1024)}).encode()
    assert "exceeds the limit" in _error(client.post("/v1/reach", content=big, headers=headers), 413)["error"]
    _error(client.post("/v1/reach", content=b"\xff\xfe", headers=headers), 422)
    _error(client.post("/v1/quality", json={"provider": 3}), 422)
    _error(client.post("/v1/quality", json={"providers": "dmp_a"}), 422)


def test_quality_rows_filter_by_provider_and_segment(client):
    report = quality_report()
    every = client.post("/v1/quality", json={}).json()
    assert every["method"] == "mle" and every["campaigns"] == 12
    assert [(r["provider"], r["segment"]) for r in every["rows"]] == [
        (p, s) for p in ("dmp_a", "dmp_b", "dmp_c") for s in ("sports", "travel")
    ]
    assert [(p["provider"], p["rank"]) for p in every["providers"]] == [
        ("dmp_a", 1),
        ("dmp_b", 2),
        ("dmp_c", 3),
    ]
    one = client.post("/v1/quality", json={"provider": "DMP_B", "segment": "Sports"}).json()
    (row,) = one["rows"]
    fitted = report["providers"]["dmp_b"]["segments"]["sports"]
    assert row["precision"] == pytest.approx(fitted["mle"]["precision"])
    assert row["false_positive_rate"] == pytest.approx(0.05, abs=1e-6) and row["recall"] == pytest.approx(0.8)
    assert row["methods"]["least_squares"] == fitted["least_squares"] and row["rank"] == 2
    assert one["providers"] == [{"provider": "dmp_b", **report["providers"]["dmp_b"]["summary"]}]
    skipped = client.post("/v1/quality", json={"provider": "dmp_c", "segment": "travel"}).json()["rows"][0]
    assert "fewer than" in skipped["skipped"] and skipped["precision"] is None
    sports = client.post("/v1/quality", json={"segment": "sports"}).json()
    assert {r["provider"] for r in sports["rows"]} == {"dmp_a", "dmp_b", "dmp_c"}
    body = _error(client.post("/v1/quality", json={"provider": "dmp_z"}), 404)
    assert body["details"] == ["known providers: dmp_a, dmp_b, dmp_c"]
    body = _error(client.post("/v1/quality", json={"provider": "dmp_a", "segment": "opera"}), 404)
    assert body["details"] == ["known segments: sports, travel"]


def test_quality_without_a_table_is_404_and_says_how():
    with TestClient(create_audience_app(AudienceService(small_index()))) as client:
        body = _error(client.post("/v1/quality", json={}), 404)
        assert "--quality" in body["details"][0]
        assert client.get("/healthz").json()["quality"] is False


def test_quality_table_loads_quality_json_and_nulls_what_json_cannot_carry(tmp_path):
    report = quality_report()
    report["providers"]["dmp_a"]["segments"]["sports"]["mle"]["precision_se"] = float("nan")
    report["providers"]["dmp_a"]["segments"]["sports"]["mle"]["cv_error"] = float("inf")
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(report))  # NaN and Infinity, as Python's json writes them
    row = QualityTable.load(path).select("dmp_a", "sports")["rows"][0]
    assert row["cv_error"] is None and row["methods"]["mle"]["precision_se"] is None
    for broken, words in [("{", "not JSON"), ('{"method": "mle"}', "not a quality report")]:
        path.write_text(broken)
        with pytest.raises(InputError, match=words):
            QualityTable.load(path)
    with pytest.raises(InputError, match="no such file"):
        QualityTable.load(tmp_path / "missing.json")


def test_healthz_and_metrics_count_every_status(client):
    client.post("/v1/reach", json={"query": "country:US"})
    client.post("/v1/reach", json={"query": "country:"})
    client.post("/v1/reach", content=b"{", headers={"content-type": "application/json"})
    client.post("/nowhere", json={})
    health = client.get("/healthz").json()
    assert health == {"status": "ok", "index": {"kind": "in-process"}, "quality": True}
    text = client.get("/metrics").text
    for status in ("200", "422", "400"):
        assert f'fxrec_audience_requests_total{{endpoint="/v1/reach",status="{status}"}}' in text
    assert 'fxrec_audience_requests_total{endpoint="other",status="404"}' in text
    assert 'fxrec_audience_request_latency_seconds_bucket{endpoint="/v1/reach",le="0.001"}' in text
    assert "fxrec_audience_reach_fallbacks_total" in text


class _Failing:
    schema = SCHEMA

    def __init__(self, error: Exception):
        self.error = error

    def query(self, expr):
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "words"),
    [(RuntimeError("shard gone"), 503, "could not answer"), (RecursionError(), 422, "nests too deeply")],
)
def test_an_index_that_fails_is_never_a_500(error, status, words):
    with TestClient(create_audience_app(AudienceService(_Failing(error)))) as client:
        body = _error(client.post("/v1/reach", json={"query": "country:US"}), status)
        assert words in body["error"]
        _error(client.post("/v1/reach", json={"query": "country:"}), 422)  # parsing comes first


def test_deeply_nested_queries_within_the_size_limit_answer(client):
    for query in ("(" * 990 + "country:US" + ")" * 990, "not " * 497 + "country:US"):
        response = client.post("/v1/reach", json={"query": query})
        assert response.status_code in (200, 422), response.text


def test_health_is_degraded_while_a_shard_has_no_live_replica():
    live = {"replicas": [2, 2]}
    service = AudienceService(
        small_index(), describe=lambda: {"kind": "ray", "live_replicas": live["replicas"]}
    )
    assert service.health()["status"] == "ok"
    live["replicas"] = [2, 0]
    assert service.health()["status"] == "degraded" and service.health()["index"]["live_replicas"] == [2, 0]
