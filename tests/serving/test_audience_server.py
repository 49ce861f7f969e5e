"""`fxrec audience serve` on an index folder: a real uvicorn server in a subprocess answers reach and
quality requests; a missing index or quality file exits 2 before anything starts; on Ray shards the
API answers what the in-process index answers, and keeps answering while a killed replica is replaced."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
from audience_helpers import SCHEMA, quality_report, small_index
from typer.testing import CliRunner

from fxrec.audience.stored_index import save_index
from fxrec.cli import app
from fxrec.jobs.audience_serve import audience_service, open_index
from fxrec.serving.audience import create_audience_app
from fxrec.serving.server import BackgroundServer
from fxrec.store.redis_server import free_port

QUERY = "age in 18..24 and (interest:sports or interest:outdoor) and not country:US"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(an index folder with 2 shard files, a quality.json) for the small index."""
    root = tmp_path_factory.mktemp("audience")
    save_index(root / "index", SCHEMA, small_index().sample, 2, {"min_support": small_index().min_support})
    (root / "quality.json").write_text(json.dumps(quality_report()))
    return root / "index", root / "quality.json"


def test_an_index_folder_answers_in_process_like_the_index(folders):
    opened = open_index(folders[0], in_process=True)
    assert opened.index.query(QUERY) == small_index().query(QUERY)
    described = opened.describe()
    assert described["kind"] == "in-process" and (described["users"], described["rows"]) == (20_000, 2000)


def test_serve_command_answers_from_a_subprocess(folders):
    index, quality = folders
    port = free_port()
    command = [sys.executable, "-m", "fxrec", "audience", "serve", "--index", str(index)]
    command += ["--quality", str(quality), "--in-process", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"the server exited with {server.returncode}"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /healthz"
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30) as client:
            answer = client.post("/v1/reach", json={"query": QUERY})
            assert answer.status_code == 200, answer.text
            expected = small_index().query(QUERY)
            assert answer.json()["users"]["estimate"] == pytest.approx(expected.users)
            bad = client.post("/v1/reach", json={"query": "country:US and agee > 3"})
            assert bad.status_code == 422 and bad.json()["caret"] == " " * 15 + "^^^^"
            rows = client.post("/v1/quality", json={"provider": "dmp_a"}).json()["rows"]
            assert [r["segment"] for r in rows] == ["sports", "travel"]
            health = client.get("/healthz").json()
            assert health["index"]["kind"] == "in-process" and health["quality"] is True
            assert 'endpoint="/v1/reach",status="422"' in client.get("/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_command_rejects_a_missing_index_or_quality_file(folders, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["audience", "serve", "--index", str(tmp_path / "none"), "--in-process"])
    assert result.exit_code == 2 and "not a reach index" in " ".join(result.output.split())
    result = runner.invoke(
        app, ["audience", "serve", "--index", str(folders[0]), "--quality", str(tmp_path / "q.json")]
    )
    assert result.exit_code == 2 and "no such file" in " ".join(result.output.split())


@pytest.mark.slow
def test_reach_on_ray_shards_answers_like_in_process(folders):
    opened = open_index(folders[0], in_process=False, replicas=2)
    try:
        service = audience_service(opened, None)
        with BackgroundServer(service, app=create_audience_app(service)) as server:
            for query in (
                QUERY,
                "country:US",
                " and ".join(f"interest:{n}" for n in SCHEMA.segments["interest"][-3:]),
            ):
                answer = httpx.post(server.url + "/v1/reach", json={"query": query}, timeout=60)
                assert answer.status_code == 200, answer.text
                expected = small_index().query(query)
                assert answer.json()["users"]["estimate"] == pytest.approx(expected.users, rel=1e-9)
                assert answer.json()["fell_back"] is expected.fallback
            health = httpx.get(server.url + "/healthz").json()["index"]
            assert health["kind"] == "ray" and health["live_replicas"] == [2, 2]
            import ray

            ray.kill(opened.index.replicas(0)[0])  # requests keep coming while the shard is replaced
            statuses = [
                httpx.post(server.url + "/v1/reach", json={"query": QUERY}, timeout=60).status_code
                for _ in range(20)
            ]
            assert statuses == [200] * 20
            assert opened.index.wait_replicated(2, timeout=60)
            assert httpx.get(server.url + "/healthz").json()["index"]["live_replicas"] == [2, 2]
    finally:
        opened.close()
