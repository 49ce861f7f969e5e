"""The commands `register` adds, the demo's closing step, and a small side-by-side load test."""

from __future__ import annotations

import asyncio

import pytest
import typer
from helpers import make_service
from typer.testing import CliRunner

from fxrec.cli.serve import register
from fxrec.jobs.demo import show_requests
from fxrec.jobs.loadtest import LoadSettings, compare_modes, drive, sample_payloads
from fxrec.serving.server import BackgroundServer


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_register_adds_the_three_commands():
    runner = CliRunner()
    for command in ("serve", "loadtest", "refresh-worker"):
        result = runner.invoke(_app(), [command, "--help"])
        assert result.exit_code == 0, result.output
    assert "--refresh-capacity" in runner.invoke(_app(), ["serve", "--help"], terminal_width=200).output


def test_serve_reports_a_bad_run_without_a_traceback(tmp_path):
    result = CliRunner().invoke(_app(), ["serve", "--run", str(tmp_path), "--vm", "vm"])
    assert result.exit_code == 2 and "not a run" in " ".join(result.output.split())


def test_demo_scores_requests_and_shows_the_refresh(served_run):
    exchanges = show_requests(served_run, "vm_transfer", requests=2, candidates=3)
    assert [e["status"] for e in exchanges] == [200, 200, 200, 422]
    repeat = exchanges[2]["response"]
    assert repeat["sources"]["sum_user"] == {"fresh": 3}  # refreshed between the first and the repeat
    assert "unknown feature" in exchanges[3]["response"]["error"]


def test_load_generator_counts_statuses_and_percentiles(served_run, catalog, tmp_path):
    service = make_service(served_run, "vm_plain", tmp_path, catalog=catalog, mode="vm")
    payloads = sample_payloads(served_run, "vm_plain", 40, candidates=5, users=10, catalog=catalog)
    payloads[3] = {**payloads[3], "user_id": 10**12}  # one 404
    with BackgroundServer(service) as server:
        result = asyncio.run(drive(server.url, payloads, rate=200, concurrency=4, seconds=30))
    assert result["requests"] == 40 and result["statuses"] == {"200": 39, "404": 1}
    assert result["errors"] == 1 and result["server_errors"] == 0
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]


@pytest.mark.slow
def test_compare_modes_side_by_side(served_run):
    settings = LoadSettings(
        requests=60,
        seconds=20,
        rate=30,
        concurrency=4,
        candidates=10,
        warmup=10,
        users=20,
        rounds=2,
        pause=0.2,
    )
    results = compare_modes(served_run, "vm_transfer", ["vm", "async", "inline"], settings)
    rows = {r["mode"]: r for r in results["rows"]}
    assert set(rows) == {"vm", "async", "inline"}
    assert all(r["server_errors"] == 0 and r["requests"] == 60 for r in rows.values())
    assert rows["async"]["background"]['fxrec_refresh_total{event="done"}'] > 0
    assert "p99 async/vm" in results["ratios"] and "p99 inline/vm" in results["ratios"]
    assert rows["inline"]["sources"]["tae"] == {"inline": 600}
    # every round is reported on its own: 2 rounds of 30 requests each, and one ratio per round
    assert all([part["requests"] for part in r["rounds"]] == [30, 30] for r in rows.values())
    assert len(results["ratios"]["p99 async/vm"]["per_round"]) == 2


def test_round_ratios_pair_rounds_and_show_a_stall_as_spread():
    from fxrec.jobs.loadtest import round_ratios

    def row(mode: str, p99s: list[float]) -> dict:
        rounds = [{"p50_ms": 10.0, "p99_ms": x, "server_p50_ms": 5.0, "server_p99_ms": x / 2} for x in p99s]
        pooled = max(p99s)  # a pooled p99 is set by the worst round
        return {
            "mode": mode,
            "p50_ms": 10.0,
            "p99_ms": pooled,
            "server_p50_ms": 5.0,
            "server_p99_ms": pooled / 2,
            "rounds": rounds,
        }

    # round 2 stalled the machine while (a) was measured: pooled, (b) looks 4x faster
    rows = [row("vm", [20.0, 200.0, 20.0, 20.0, 20.0]), row("async", [22.0, 24.0, 22.0, 26.0, 22.0])]
    ratio = round_ratios(rows)["p99 async/vm"]
    assert ratio["per_round"] == pytest.approx([1.1, 0.12, 1.1, 1.3, 1.1])  # round r over round r
    assert ratio["median"] == pytest.approx(1.1) and ratio["min"] == pytest.approx(0.12)
    assert ratio["max"] == pytest.approx(1.3)
    assert ratio["all_requests"] == pytest.approx(26.0 / 200.0)
    assert round_ratios(rows)["p50 async/vm"]["median"] == pytest.approx(1.0)
    assert set(round_ratios(rows)) == {
        "p50 async/vm",
        "p99 async/vm",
        "server_p50 async/vm",
        "server_p99 async/vm",
    }


def test_server_side_quantiles_from_histogram_deltas():
    from fxrec.jobs.loadtest import histogram_quantiles

    before = {0.001: 5.0, 0.01: 5.0, 0.1: 5.0, float("inf"): 5.0}  # warm-up requests, not measured
    after = {0.001: 5.0, 0.01: 95.0, 0.1: 105.0, float("inf"): 105.0}  # 90 in (1, 10] ms, 10 in (10, 100] ms
    q = histogram_quantiles(before, after)
    assert 1.0 < q["server_p50_ms"] < 10.0
    assert abs(q["server_p50_ms"] - (1 + 9 * 50 / 90)) < 1e-6
    assert 10.0 < q["server_p99_ms"] <= 100.0
