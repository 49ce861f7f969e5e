"""Crash and resume of sharded training: a rank SIGKILLed mid-day, a 2-rank checkpoint resumed on one
rank, and `max_steps` on `fxrec train --nproc 2` ending in the one-process message.

Tables: `hour` and `country` data-parallel (their row-wise AdaGrad state is the replica optimizer's, kept
in the checkpoint's progress), the rest table-wise (fused TBEs, their state in the DCP shards), so both
kinds of optimizer state go through a crash.

Tolerances. A restart on the same 2 ranks replays the killed run's remaining steps from the checkpoint's
weights, optimizer state, RNG and step, with the same stripes and collectives: the same float
operations in the same order, so its predictions and final weights equal the uninterrupted run's to
float32 rounding (asserted 1e-6). Resumed on one rank, the rest of the run takes each global batch's
gradient in one piece instead of as two stripes averaged over the ranks: the same arithmetic summed in
another order, the 1e-5 of the 2-rank vs one-process parity test (tests/dist/test_sharded_parity.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from test_sharded_parity import FM, TRAIN, tiny_log  # noqa: F401  (the module's fixture)
from torch.multiprocessing.spawn import ProcessExitedException

from fxrec.config import FMConfig, ShardingConfig
from fxrec.data.eventlog import EventLog
from fxrec.dist import checkpoint
from fxrec.dist.session import launch
from fxrec.dist.trainer import ShardedTrainer
from fxrec.models.checkpoint import load as load_pt

EVERY, KILL_AT = 4, 9  # checkpoints at steps 4 and 8; rank 1 dies after step 9, mid-way through day 1
RESUMABLE = TRAIN.model_copy(update={"checkpoint_every": EVERY})
SHARDING = ShardingConfig(
    tables={
        "*": {"sharding_types": ["table_wise"]},
        "hour": {"sharding_types": ["data_parallel"]},
        "country": {"sharding_types": ["data_parallel"]},
    }
)


class _KilledMidDay(ShardedTrainer):
    """Rank 1 SIGKILLs itself right after step KILL_AT (no cleanup, no message: a crashed host)."""

    def train_step(self, batch):
        logits = super().train_step(batch)
        if self.session.rank == 1 and self.step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        return logits


def _fit(log: EventLog, model_dir: Path, session, trainer_class=ShardedTrainer) -> None:
    from fxrec.factory import build_model

    torch.manual_seed(0)
    model = build_model(FMConfig(**FM), log.spec, embedding_lr=RESUMABLE.embedding_lr)
    trainer_class(model, RESUMABLE, model_dir, session, SHARDING, progress=False).fit(log)


def _uninterrupted_then_killed(log_path: Path, root: Path) -> None:
    """One launch (ranks start once): the uninterrupted run, then the run whose rank 1 dies."""
    from fxrec.dist.session import start

    session = start("gloo")
    log = EventLog(log_path)
    _fit(log, root / "whole", session)
    _fit(log, root / "killed", session, _KilledMidDay)


def _resume(log_path: Path, model_dir: Path) -> bool:
    from fxrec.dist.session import start

    _fit(EventLog(log_path), model_dir, start("gloo"))
    return True


def _predictions(model_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(model_dir / "predictions" / "*.parquet").sort("event_id")


def _assert_same_run(got: Path, reference: Path, tolerance: float) -> float:
    a, b = _predictions(got), _predictions(reference)
    assert a["event_id"].to_list() == b["event_id"].to_list()
    assert a["trained_through"].to_list() == b["trained_through"].to_list()
    diff = float(np.abs(a["pred_click"].to_numpy() - b["pred_click"].to_numpy()).max())
    assert diff <= tolerance, diff
    mine, theirs = torch.load(got / "model.pt"), torch.load(reference / "model.pt")
    assert sorted(mine) == sorted(theirs)
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key].float(), value.float(), atol=tolerance, rtol=0, msg=key)
    return diff


@pytest.mark.slow
def test_a_rank_killed_mid_day_resumes_to_the_uninterrupted_run(tiny_log, tmp_path):  # noqa: F811
    with pytest.raises(ProcessExitedException) as killed:
        launch(2, _uninterrupted_then_killed, tiny_log.path, tmp_path)
    assert killed.value.error_index == 1 and killed.value.exit_code == -signal.SIGKILL
    assert (tmp_path / "whole" / "model.pt").exists() and not (tmp_path / "killed" / "model.pt").exists()
    progress = load_pt(tmp_path / "killed" / "checkpoint.dcp" / checkpoint.LATEST)
    assert progress["step"] == 8 and progress["world_size"] == 2
    assert not progress["day_finished"] and progress["batches_done"] > 0  # a mid-day checkpoint

    shutil.copytree(tmp_path / "killed", tmp_path / "one")  # the same 2-rank checkpoint, for one rank
    assert launch(2, _resume, tiny_log.path, tmp_path / "killed")
    _assert_same_run(tmp_path / "killed", tmp_path / "whole", 1e-6)
    assert launch(1, _resume, tiny_log.path, tmp_path / "one")
    _assert_same_run(tmp_path / "one", tmp_path / "whole", 1e-5)


def _config(tmp_path: Path, max_steps: int | None) -> Path:
    world = dict(
        days=3, impressions_per_day=300, users=120, new_users_per_day=10, advertisers=8, ads=40,
        new_ads_per_day=4, history_length=4,
    )  # fmt: skip
    train = {**RESUMABLE.model_dump(mode="json"), "max_steps": max_steps}
    config = {
        "name": "tiny",
        "simulator": world,
        "fm": FM,
        "train": train,
        "sharding": SHARDING.model_dump(mode="json"),
    }
    path = tmp_path / f"tiny-{max_steps}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fxrec(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fxrec", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow
def test_max_steps_on_nproc_ranks_ends_like_one_process(tmp_path):
    """`max_steps` stops `fxrec train fm --nproc 2` with the one-process message and exit code (no rank's
    traceback), and its 2-rank checkpoint is then finished by a plain one-process `fxrec train fm`."""
    config = _config(tmp_path, max_steps=3)
    one = _fxrec("train", "fm", "-c", str(config), "-r", str(tmp_path / "one"))
    two = _fxrec("train", "fm", "-c", str(config), "-r", str(tmp_path / "two"), "--nproc", "2")
    for stopped in (one, two):
        assert stopped.returncode == 1, stopped.stderr
        assert "Traceback" not in stopped.stderr, stopped.stderr
        lines = [line for line in stopped.stderr.splitlines() if line.startswith("stopped:")]
        assert lines == ["stopped: stopped after 3 steps (max_steps); run again to resume"], stopped.stderr
    model = tmp_path / "two" / "models" / "fm"
    assert load_pt(model / "checkpoint.dcp" / checkpoint.LATEST)["world_size"] == 2
    finished = _fxrec("train", "fm", "-c", str(_config(tmp_path, None)), "-r", str(tmp_path / "two"))
    assert finished.returncode == 0, finished.stderr
    assert (model / "model.pt").exists() and not (model / "checkpoint.dcp").exists()
