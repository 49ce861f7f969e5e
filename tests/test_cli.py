"""The CLI end to end on a tiny config: simulate -> train FM -> train VMs -> eval -> report."""

import json

import yaml
from typer.testing import CliRunner

from fxrec.cli import app

TINY = {
    "name": "tiny",
    "simulator": {
        "days": 4, "impressions_per_day": 5000, "users": 600, "new_users_per_day": 30,
        "advertisers": 20, "ads": 120, "new_ads_per_day": 10, "history_length": 5,
    },
    "fm": {"name": "fm", "role": "fm", "embedding_dim": 8, "heads": {"hidden": [16]}},
    "vm_per_surface": True,
    "vm_template": {"name": "vm", "role": "vm", "embedding_dim": 8, "heads": {"hidden": [8]}},
    # Each VM sees a few hundred to a few thousand rows a day: at the default dense_lr (1e-3) its ~10
    # Adam steps barely move the heads off the first day's base rate, so a noisy first day (stories:
    # 0.073 on 715 rows, 0.049-0.058 after) leaves NE above 1 from calibration alone.
    "train": {"batch_size": 256, "checkpoint_every": 5, "dense_lr": 1e-2},
}


def test_demo_writes_a_report_comparing_fm_and_every_vm(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["demo", "--config", str(config), "--run", str(run)])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report.json").read_text())
    models = {m["name"]: m for m in report["models"]}
    assert set(models) == {"fm", "vm_feed", "vm_stories", "vm_video"}
    assert models["fm"]["role"] == "fm" and models["vm_feed"]["role"] == "vm"
    for field in ("ne", "auc", "gauc", "calibration", "n_eval", "surface", "channels"):
        assert field in models["vm_feed"]
    assert {c["vm"] for c in report["comparisons"]} == {"vm_feed", "vm_stories", "vm_video"}
    assert sum(models[v]["n_eval"] for v in ("vm_feed", "vm_stories", "vm_video")) == models["fm"]["n_eval"]
    # Every model beats its eval events' base rate, and the FM (every surface, user ids) beats every VM.
    for vm in ("vm_feed", "vm_stories", "vm_video"):
        assert models["fm"]["ne"] < models[vm]["ne"] < 1.0, {n: m["ne"] for n, m in models.items()}
    html = (run / "report.html").read_text()
    assert "<img" in html and "vm_video" in html and "data:image/png;base64," in html
    # Re-running skips finished work.
    again = CliRunner().invoke(app, ["train", "fm", "--config", str(config), "--run", str(run)])
    assert again.exit_code == 0 and "already trained" in again.output


def test_bad_config_key_is_a_clear_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**TINY, "trian": {}}))
    result = CliRunner().invoke(app, ["demo", "--config", str(config), "--run", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "unknown key 'trian'; accepted keys: name, simulator" in result.stderr


def test_unknown_vm_name(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(app, ["train", "vm", "--config", str(config), "--run", str(tmp_path / "r"), "--name", "nope"])
    assert result.exit_code == 2
    assert "no VM named 'nope'" in result.output


def test_unknown_open_bandit_campaign_is_a_clear_error(tmp_path):
    out = tmp_path / "obd"
    result = CliRunner().invoke(app, ["data", "import", "open-bandit", "--out", str(out), "--campaigns", "all,kids"])
    assert result.exit_code == 2 and "campaign must be one of" in result.output and "kids" in result.output
    assert not out.exists()
