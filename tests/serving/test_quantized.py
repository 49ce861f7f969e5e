"""`fxrec quantize` end to end: the NE-budget search writes a quantized VM that the scoring service loads
and serves (channels included), its scores within the measured error of the float32 twin; the monitor
re-checks it; bad input exits 2 with nothing written."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from helpers import make_service
from typer.testing import CliRunner

from fxrec.cli import app
from fxrec.jobs.loadtest import sample_payloads
from fxrec.jobs.quantize import QUANTIZE_JSON, monitor, quantize_model
from fxrec.lowp.quantize import model_bytes
from fxrec.run import Run
from fxrec.serving.server import BackgroundServer


@pytest.fixture(scope="module")
def quantized(served_run):
    """vm_transfer (KD, SUM, LoopFM and TAE channels) quantized with a loose budget: every part cheap."""
    return quantize_model(served_run, "vm_transfer", budget=0.05, out="vm_transfer_q", progress=False)


def test_quantized_model_is_written_beside_its_source_and_loads_quantized(served_run, quantized):
    run = Run(served_run)
    record = json.loads((run.model("vm_transfer_q").root / QUANTIZE_JSON).read_text())
    assert record["source"] == "vm_transfer" and record["search"]["within_budget"]
    assert record["search_day"] < record["held_out_day"]  # searched on a trained day, judged on a later one
    loaded, source = run.load_model("vm_transfer_q"), run.load_model("vm_transfer")
    assert loaded.version == source.version  # the quantized model serves as the same model version
    assert model_bytes(loaded.model) == quantized.result.bytes < model_bytes(source.model)
    plan = quantized.result.plan
    assert any(f != "fp32" for f in plan.tables.values())


def _click_scores(response: dict) -> list[float]:
    return [float(c["scores"]["click"]) for c in response["candidates"]]


def test_server_scores_the_quantized_vm_close_to_its_float32_twin(served_run, quantized, catalog, tmp_path):
    payloads = sample_payloads(served_run, "vm_transfer", 6, candidates=5, users=6, catalog=catalog)
    scores = {}
    for name in ("vm_transfer", "vm_transfer_q"):
        service = make_service(served_run, name, tmp_path / name, catalog=catalog, mode="vm")
        with BackgroundServer(service) as server, httpx.Client(base_url=server.url, timeout=10.0) as client:
            responses = [client.post("/v1/score", json=p) for p in payloads]
        assert [r.status_code for r in responses] == [200] * len(payloads)
        scores[name] = np.array([s for r in responses for s in _click_scores(r.json())])
    assert scores["vm_transfer"].shape == scores["vm_transfer_q"].shape == (30,)
    difference = np.abs(scores["vm_transfer"] - scores["vm_transfer_q"]).max()
    assert 0 < difference < 0.05  # quantized for real, and close


def test_monitor_rechecks_the_plan_and_writes_its_record(served_run, quantized):
    summary = monitor(served_run, "vm_transfer_q", progress=False)
    assert summary["source"] == "vm_transfer" and len(summary["days"]) >= 1
    day = summary["days"][-1]
    assert day["trained_through"] < day["scored_on"]
    assert set(day["relative_ne_change"]) == {"click", "conversion"}
    assert day["drifted"] == (max(abs(c) for c in day["relative_ne_change"].values()) > summary["budget"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--name", "no_such_vm"], "no trained model 'no_such_vm'"),
        (["--name", "vm_plain", "--budget", "-1"], "--budget"),
        (["--name", "vm_plain", "--out", "vm_plain"], "overwrite"),
        (["--name", "vm_plain", "--monitor"], "not quantized"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(served_run, argv, message):
    before = sorted(p.name for p in Run(served_run).models.iterdir())
    result = CliRunner().invoke(app, ["quantize", "--run", str(served_run), *argv])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert sorted(p.name for p in Run(served_run).models.iterdir()) == before


def test_monitor_checks_every_snapshot_on_the_day_after_it(served_run, quantized, tmp_path):
    """With daily snapshots (`train.vm_snapshots: true`), each day's model is quantized with the same plan
    and scored on the next day; a snapshot of the last day (nothing after it to score) is skipped."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(served_run, copy)
    run = Run(copy)
    days = run.event_log().days
    source = run.model("vm_transfer")
    source.snapshots.mkdir(exist_ok=True)
    for day in days[1:]:
        shutil.copy(source.weights, source.snapshot(day))
    summary = monitor(copy, "vm_transfer_q", progress=False)
    assert [d["trained_through"] for d in summary["days"]] == days[1:-1]
    assert [d["scored_on"] for d in summary["days"]] == days[2:]
    assert (run.model("vm_transfer_q").root / "monitor.json").exists()


def test_vm_snapshots_keeps_a_vm_snapshot_per_trained_day(serving_config, small_log, tmp_path):
    from fxrec.jobs.train import train_model

    vm = serving_config.vms[0]
    for keep in (False, True):
        config = serving_config.model_copy(
            update={"train": serving_config.train.model_copy(update={"vm_snapshots": keep})}
        )
        run = tmp_path / f"run-{keep}"
        Run(run, config).write_config()
        model_dir = train_model(vm, config, run, small_log, quiet=True)
        assert model_dir.snapshot_days() == (small_log.days[:-1] if keep else [])
