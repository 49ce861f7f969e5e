"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP), resumable on any world size.

A checkpoint is a DCP directory `<model>/checkpoint.dcp/<step>-<day>-<batches>/` in which every rank
writes its own shards of the tables and their row-wise AdaGrad state (data-parallel tables and the
dense part, identical on every rank, are written once), plus `latest.pt`, written by rank 0 only after
every rank has finished: the training progress (day, batches done, step, RNG), the dense optimizer
(replicated) and which directory is the checkpoint. Replacing `latest.pt` is the commit: a rank killed
mid-save leaves the previous checkpoint in force. DCP reads shards by their global offsets, so a
checkpoint written by N ranks loads into M ranks' shards (M = 1 included).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from torchrec.distributed.model_parallel import DistributedModelParallel

from fxrec.dist.session import Session
from fxrec.models.checkpoint import load as load_pt
from fxrec.models.checkpoint import save_atomic
from fxrec.run import ModelDir

LATEST = "latest.pt"


def directory(model_dir: ModelDir) -> Path:
    return model_dir.root / "checkpoint.dcp"


def exists(model_dir: ModelDir | Path) -> bool:
    return (directory(ModelDir(model_dir)) / LATEST).exists()


def _state(dmp: DistributedModelParallel) -> dict[str, Any]:
    # The model's tables (ShardedTensors) and buffers, and the fused optimizer's per-row state. The
    # data-parallel tables' row-wise AdaGrad state is the trainer's `ReplicatedRowWiseAdagrad`, the same
    # on every rank: it travels in `latest.pt` with the progress (tests/dist/test_resume.py).
    return {"model": dmp.state_dict(), "embedding_optimizer": dmp.fused_optimizer.state_dict()}


def save(
    dmp: DistributedModelParallel, progress: dict[str, Any], root: Path, session: Session, groups: Any = None
) -> Path:
    """Write a checkpoint (every rank calls this at the same step) and make it the latest.

    2D (`groups`, fxrec.dist.two_d): the groups hold the same shards after a sync, so sharding group 0
    alone writes them, over its own process group.
    """
    name = f"{progress['step']:09d}-{progress['day']}-{'end' if progress['day_finished'] else progress['batches_done']}"
    path = root / name
    if session.main:
        root.mkdir(parents=True, exist_ok=True)
        if path.exists():  # a save of this very point that a crash interrupted before `latest.pt` named it
            shutil.rmtree(path)
    session.barrier()
    if groups is None:
        dcp.save(_state(dmp), checkpoint_id=path)
    elif groups.index == 0:
        dcp.save(_state(dmp), checkpoint_id=path, process_group=groups.sharding)
    session.barrier()  # every rank's shards are on disk
    if session.main:
        save_atomic({**progress, "checkpoint": name}, root / LATEST)
        for old in root.iterdir():
            if old.is_dir() and old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    session.barrier()
    return path


def load(dmp: DistributedModelParallel, root: Path, groups: Any = None) -> dict[str, Any] | None:
    """Load the latest checkpoint into `dmp` (whatever world size wrote it); its progress, or None.
    2D: every sharding group reads it over its own process group."""
    latest = root / LATEST
    if not latest.exists():
        return None
    progress = load_pt(latest)
    state = _state(dmp)
    group = None if groups is None else groups.sharding
    dcp.load(state, checkpoint_id=root / progress["checkpoint"], process_group=group)
    dmp.load_state_dict(state["model"])
    dmp.fused_optimizer.load_state_dict(state["embedding_optimizer"])
    return progress


def clear(model_dir: ModelDir | Path) -> None:
    shutil.rmtree(directory(ModelDir(model_dir)), ignore_errors=True)
