"""`fxrec funnel` end to end on a tiny simulated run: stages shrink as configured, no stage keeps more
value than scoring everything, and bad input is exit code 2 with nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from fxrec.cli import app


@pytest.fixture(scope="module")
def funnel_result(funnel_ran):
    return funnel_ran[1]


def test_funnel_end_to_end(funnel_trained, funnel_result, funnel_config):
    from fxrec.run import Run

    run = Run(funnel_trained)
    funnel = funnel_config.funnel
    assert json.loads(run.funnel_json.read_text()) == json.loads(json.dumps(funnel_result))
    assert run.funnel_png.stat().st_size > 0
    assert (run.funnel_dir / "esr" / "esr.json").exists()
    stages = funnel_result["stages"]
    assert funnel_result["requests"] > 20
    sizes = [stages[s]["mean_size"] for s in ("retrieval", "esr", "final")]
    assert sizes[0] <= funnel.retrieval_k and sizes[1] <= funnel.esr_k and sizes[2] <= funnel.final_k
    assert sizes[0] > sizes[1] > sizes[2] > 0
    kept = [stages[s]["value_kept"] for s in ("retrieval", "esr", "final")]
    assert all(0 <= k <= 1 + 1e-9 for k in kept), kept
    assert kept[0] >= kept[1] >= kept[2]  # each stage picks from what the one before kept
    assert funnel_result["end_to_end_value_kept"] == kept[2]
    recall = [stages[s]["recall_of_clicked"] for s in ("retrieval", "esr", "final")]
    assert recall[0] >= recall[1] >= recall[2]
    assert set(funnel_result["recall_at_k"]) == {"retrieval", "esr", "final_everything"}
    assert funnel_result["days"] == sorted(funnel_result["per_day"])
    assert 0 < stages["esr"]["soft_recall"] <= 1 + 1e-9


def test_report_has_a_funnel_section(funnel_trained, funnel_result, tmp_path):
    from fxrec.report.render import write_report

    content = {
        "ne_over_time": {"periods": {}, "period": "day", "task": "click", "rule": "-"},
        "comparisons": [],
        "models": [],
        "tasks": ["click"],
        "dataset": "x",
        "eval_days": ["2026-01-01"],
        "funnel": funnel_result,
    }
    _, html = write_report(content, tmp_path / "r.json", tmp_path / "r.html", "t")
    text = html.read_text()
    assert "Funnel: retrieval, early-stage ranking, final stage" in text
    assert "funnel recall vs K" in text and "early-stage ranker" in text


def _written(run):
    return sorted(p.relative_to(run) for p in run.rglob("*"))


@pytest.mark.parametrize("broken", ["candidates", "publish", "vm"])
def test_bad_input_is_exit_2_and_writes_nothing(funnel_trained, tmp_path, broken):
    run = tmp_path / "run"
    shutil.copytree(funnel_trained, run, ignore=shutil.ignore_patterns("funnel*"))
    from fxrec.run import Run

    config = Run(run).config
    events = tmp_path / "events"
    shutil.copytree(config.events, events)
    config = config.model_copy(update={"events": str(events)})
    Run(run, config).write_config()
    if broken == "candidates":
        shutil.rmtree(events / "candidates")
    elif broken == "publish":
        shutil.rmtree(run / "publish")
    else:
        shutil.rmtree(run / "models" / "vm_feed")
    before = _written(run)
    result = CliRunner().invoke(app, ["funnel", "--run", str(run)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    assert {"candidates": "candidate log", "publish": "published FM", "vm": "not trained"}[
        broken
    ] in result.output
    assert _written(run) == before


def test_demo_runs_the_funnel_when_the_log_has_candidates(tmp_path):
    import yaml

    config = {
        "name": "tiny_funnel",
        "simulator": {
            "days": 4, "impressions_per_day": 3000, "users": 500, "new_users_per_day": 30, "advertisers": 15,
            "ads": 100, "new_ads_per_day": 8, "history_length": 5, "candidate_log_rate": 0.02,
            "quality_events": True,
        },
        "fm": {"name": "fm", "role": "fm", "embedding_dim": 8, "heads": {"hidden": [16]}},
        "vms": [{"name": "vm_feed", "role": "vm", "surfaces": ["feed"], "embedding_dim": 8, "heads": {"hidden": [8]}}],
        "train": {"batch_size": 256, "checkpoint_every": 50, "dense_lr": 1e-2, "vm_snapshots": True, "probe": False},
        "funnel": {"retriever": "popularity", "retrieval_k": 30, "esr_k": 8, "final_k": 1, "eval_days": 1},
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["demo", "--config", str(path), "--run", str(run)])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report.json").read_text())
    assert report["funnel"]["stages"]["esr"]["k"] == 8 and report["funnel"]["retriever"] == "popularity"
    assert "Funnel: retrieval, early-stage ranking, final stage" in (run / "report.html").read_text()
