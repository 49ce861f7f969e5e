"""The low-precision probe of the FM in a run's report: every Linear in report.json, a table in report.html,
and `fxrec probe` printing it."""

from __future__ import annotations

import json
import warnings

import pytest
from torch import nn
from typer.testing import CliRunner

from fxrec.cli import app
from fxrec.report.probe_table import probe_table


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory, small_log, tiny_fm_config):
    from fxrec.config import RunConfig
    from fxrec.jobs.evaluate import evaluate_and_report
    from fxrec.jobs.train import prepare_events, train_model

    config = RunConfig(
        name="tiny",
        simulator=None,
        events=str(small_log.path),
        fm=tiny_fm_config,
        train={"batch_size": 256, "report_days": 2, "checkpoint_every": 1000, "snapshots": "none"},
    )
    run = tmp_path_factory.mktemp("probe") / "run"
    log = prepare_events(config, run)
    train_model(config.fm, config, run, log, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal run prints no third-party warnings, the probe included
        evaluate_and_report(config, run, log)
    return run, config


def test_report_json_lists_every_linear_of_the_fm(probed_run):
    from fxrec.run import Run

    run, config = probed_run
    probe = json.loads((run / "report.json").read_text())["probe"]
    model = Run(run).load_model(config.fm.name).model
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert [layer["name"] for layer in probe["layers"]] == linears
    assert probe["model"] == "fm" and 0 < probe["events"] <= 4096 and probe["seconds"] > 0
    ran = [layer for layer in probe["layers"] if layer["rows_seen"]]
    assert ran and all(
        {"bf16", "fp16", "int8_rowwise"} <= {r["format"] for r in layer["results"]} for layer in ran
    )
    assert all("choice" in layer for layer in probe["layers"])
    assert json.loads(Run(run).model("fm").probe_json.read_text())["layers"] == probe["layers"]


def test_report_html_has_the_probe_table(probed_run):
    run, _ = probed_run
    html = (run / "report.html").read_text()
    probe = json.loads((run / "report.json").read_text())["probe"]
    assert "Low-precision probe: fm" in html and '<table class="probe">' in html
    for layer in probe["layers"]:
        if layer["rows_seen"]:
            assert f'<td class="name">{layer["name"]}</td>' in html
    assert "<th>bf16</th>" in html and "<th>int8_rowwise</th>" in html and "<th>fp32</th>" not in html


def test_probe_cli_prints_the_table(probed_run):
    run, _ = probed_run
    result = CliRunner().invoke(app, ["probe", "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert "low-precision probe on cpu" in result.output and "choice:" in result.output
    assert "int8_rowwise" in result.output and "probe.json" in result.output


def test_probe_cli_on_a_missing_model_is_a_clear_error(probed_run):
    run, _ = probed_run
    result = CliRunner().invoke(app, ["probe", "--run", str(run), "--model", "nope"])
    assert result.exit_code == 2 and "no trained model 'nope'" in result.output


def test_probe_off_leaves_the_report_without_it(probed_run, small_log):
    from fxrec.jobs.evaluate import evaluate_and_report

    run, config = probed_run
    off = config.model_copy(update={"train": config.train.model_copy(update={"probe": False})})
    content = evaluate_and_report(off, run, small_log)
    assert "probe" not in content
    assert "Low-precision probe" not in (run / "report.html").read_text()


def _layer(name: str, size: int, ran: bool = True) -> dict:
    results = [
        {
            "format": "fp32",
            "kernel": "torch.mm",
            "error": 0.0,
            "time_s": 1e-5,
            "speedup": 1.0,
            "safe": True,
            "fast": False,
        },
        {
            "format": "bf16",
            "kernel": "torch.mm",
            "error": 0.004,
            "time_s": 5e-6,
            "speedup": 2.0,
            "safe": True,
            "fast": True,
        },
        {
            "format": "fp8_e4m3_rowwise",
            "kernel": "emulated",
            "error": 0.5,
            "time_s": None,
            "speedup": None,
            "safe": False,
            "fast": False,
        },
    ]
    return {
        "name": name,
        "in_features": size,
        "out_features": size,
        "rows_seen": 10 if ran else 0,
        "results": results if ran else [],
        "choice": "bf16" if ran else None,
    }


def test_the_table_keeps_the_biggest_layers_in_model_order():
    probe = {
        "layers": [
            _layer("a", 4),
            _layer("b", 64),
            _layer("c", 8),
            _layer("d", 32),
            _layer("idle", 16, ran=False),
        ]
    }
    table = probe_table(probe, limit=2)
    assert [row["name"] for row in table["rows"]] == ["b", "d"]
    assert table["left_out"] == 2 and table["never_ran"] == ["idle"] and table["chosen"] == {"bf16": 4}
    assert table["formats"] == ["bf16", "fp8_e4m3_rowwise"]
    bf16, fp8 = table["rows"][0]["cells"]
    assert (bf16["error"], bf16["speedup"], bf16["kind"]) == ("0.004", "2.00×", "chosen")
    assert (fp8["speedup"], fp8["kind"], fp8["safe"]) == ("-", "unsafe", False)
