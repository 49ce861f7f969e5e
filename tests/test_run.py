"""A run directory's layout: where the log, the models' files and the published FM outputs are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fxrec.config import FMConfig, RunConfig
from fxrec.run import ModelDir, Run, RunError, trained_through


def _config(**update) -> RunConfig:
    return RunConfig(name="t", fm=FMConfig(name="fm", role="fm"), **update)


def test_the_configs_events_win_over_the_runs_own_log(tmp_path):
    assert Run(tmp_path / "run", _config()).events == tmp_path / "run" / "events"
    elsewhere = tmp_path / "shared" / "events"
    assert Run(tmp_path / "run", _config(events=str(elsewhere))).events == elsewhere


def test_the_config_comes_from_config_yaml_and_a_missing_one_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        Run(tmp_path).config  # noqa: B018
    written = Run(tmp_path / "run", _config(events="/data/log"))
    written.write_config()
    read = Run(tmp_path / "run")
    assert read.config == written.config and read.events == Path("/data/log")


def test_snapshot_days_are_sorted_oldest_first_and_ignore_other_files(tmp_path):
    model = ModelDir(tmp_path / "fm")
    model.snapshots.mkdir(parents=True)
    for day in ("2024-01-10", "2024-01-02", "2024-01-09"):
        model.snapshot(day).write_bytes(b"")
    (model.snapshots / ".day=2024-01-11.pt.tmp-1").write_bytes(b"")  # an unfinished atomic write
    assert model.snapshot_days() == ["2024-01-02", "2024-01-09", "2024-01-10"]


def test_trained_through_prefers_the_newest_snapshot_over_the_checkpoints_record(tmp_path):
    model = ModelDir(tmp_path / "vm")
    assert model.trained_through() is None
    model.root.mkdir()
    torch.save({"trained_through": ""}, model.checkpoint)
    assert model.trained_through() is None  # a checkpoint taken before any day finished
    torch.save({"trained_through": "2024-01-03"}, model.checkpoint)
    assert model.trained_through() == "2024-01-03"  # VMs keep no daily snapshots
    model.snapshots.mkdir()
    for day in ("2024-01-05", "2024-01-04"):
        model.snapshot(day).write_bytes(b"")
    assert model.trained_through() == trained_through(model.root) == "2024-01-05"


def test_publish_directories_name_the_delay_and_hold_the_user_store(tmp_path):
    run = Run(tmp_path)
    assert run.publish_dir("fm") == tmp_path / "publish" / "fm"
    assert run.publish_dir("fm", 2) == tmp_path / "publish" / "fm_delay2"
    assert run.user_store("fm").parent == run.publish_dir("fm", 0)
    assert run.user_store("fm") != run.serving_store


def test_a_model_dir_is_a_path_like_and_only_finished_models_count_as_trained(tmp_path):
    run = Run(tmp_path, _config())
    fm, vm = run.model("fm"), run.model("vm")
    assert Path(fm) == Path(os.fspath(fm)) == tmp_path / "models" / "fm" and ModelDir(fm).root == fm.root
    fm.root.mkdir(parents=True)
    fm.checkpoint.write_bytes(b"")  # training started, not finished
    vm.root.mkdir()
    vm.weights.write_bytes(b"")
    assert run.trained_models() == ["vm"]
    with pytest.raises(RunError, match=r"no trained model 'fm'.*\['vm'\]"):
        run.load_model("fm")


def test_disk_usage_counts_the_run_folder_and_its_parts(tmp_path):
    run = Run(tmp_path / "run", _config())
    for path, size in [
        ("events/day=x/part-0.parquet", 10_000),
        ("models/fm/model.pt", 50_000),
        ("report.json", 100),
    ]:
        (run.root / path).parent.mkdir(parents=True, exist_ok=True)
        (run.root / path).write_bytes(os.urandom(size))
    usage = run.disk_usage()
    assert usage.parts["models"] >= 50_000 and usage.parts["events"] >= 10_000 and usage.parts["publish"] == 0
    assert usage.total == sum(usage.parts.values())
    line = str(usage)
    assert line.startswith(f"run folder {run.root}: ") and "models 0.1 MB" in line and "publish" not in line
