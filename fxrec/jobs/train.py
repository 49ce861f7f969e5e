"""Training jobs: the run's event log, then its models, each in its run directory (`fxrec.run`).

Each step skips work that is already done (a finished model has model.pt), so a job can be re-run or
resumed after a crash; `fresh=True` redoes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError
from rich.console import Console

from fxrec.config import ModelConfig, RunConfig, VMConfig
from fxrec.data.eventlog import SPEC_FILE, EventLog
from fxrec.data.schema import DatasetSpec
from fxrec.data.simulator import dataset_spec, simulate_to
from fxrec.dist import checkpoint as sharded_checkpoint
from fxrec.dist import session as ranks
from fxrec.dist.trainer import ShardedTrainer
from fxrec.errors import InputError
from fxrec.factory import build_model, save_model_card
from fxrec.jobs import print_disk_usage
from fxrec.jobs.snapshots import prune_snapshots
from fxrec.lowp.dispatch import Dispatch
from fxrec.run import ModelDir, Run
from fxrec.train.trainer import Trainer
from fxrec.transfer.loopfm import LoopFMChannel
from fxrec.transfer.published import PUBLISH_META, PublishedFM
from fxrec.transfer.registry import CHANNELS

console = Console(width=160)


def _simulates(run: Run, fresh: bool) -> bool:
    return run.config.events is None and (fresh or not (run.events / SPEC_FILE).exists())


def planned_spec(config: RunConfig, run: Path, fresh: bool = False) -> DatasetSpec:
    """The DatasetSpec of the run's log, found without writing anything: an existing log's (checked to
    be one), or the spec the simulator will write. Raises InputError when there is neither."""
    run_dir = Run(run, config)
    if not _simulates(run_dir, fresh):
        return run_dir.event_log().spec
    if config.simulator is None:
        raise InputError("the config has neither `events:` (an existing log) nor `simulator:` settings")
    return dataset_spec(config.simulator)


def model_problems(model_config: ModelConfig, spec: DatasetSpec, run: Path) -> list[str]:
    """What would stop `train_model` midway, one line each: surfaces, features or tasks the log lacks, or
    transfer channels without a published FM. Reads only, so callers check before writing anything."""
    name, problems = model_config.name, []
    known = {"surfaces": spec.surfaces, "features": [f.name for f in spec.features], "tasks": spec.tasks}
    for key, values in known.items():
        unknown = [v for v in getattr(model_config, key) or [] if v not in values]
        if unknown:
            problems.append(f"model {name!r}: {key} {unknown} are not in dataset {spec.name!r}; known {key}: {values}")
    channels = model_config.channel_specs()  # an FM reads none
    published = Run(run).publish_dir(model_config.fm, model_config.fm_delay) if channels else None
    if published is not None and not (published / PUBLISH_META).exists():
        problems.append(
            f"model {name!r}: channels {[c['name'] for c in channels]} read the published FM "
            f"{model_config.fm!r}, but {published} has no {PUBLISH_META}; run `fxrec publish --run {run}` first"
        )
    return problems


def check_models(models: list[ModelConfig], spec: DatasetSpec, run: Path, config: Path | str | None = None) -> None:
    """Every problem of every model at once, as one InputError (one line per problem), before any training."""
    where = f"{config}: " if config is not None else ""
    problems = [where + p for m in models for p in model_problems(m, spec, run)]
    if problems:
        raise InputError(*problems)


def prepare_events(config: RunConfig, run: Path, fresh: bool = False) -> EventLog:
    planned_spec(config, run, fresh)  # a bad `events:` log fails here, before the run directory is touched
    run_dir = Run(run, config)
    run_dir.write_config()
    path = run_dir.events
    if _simulates(run_dir, fresh):
        assert config.simulator is not None  # planned_spec checked
        console.print(f"simulating {config.simulator.days} days x {config.simulator.impressions_per_day:,} impressions -> {path}")
        simulate_to(config.simulator, path)
    return EventLog(path)


def published_for(model_config: ModelConfig, run_dir: Run) -> PublishedFM | None:
    """The published FM outputs a VM's transfer channels read (None for a model without channels)."""
    blocks = model_config.channels if isinstance(model_config, VMConfig) else []
    if not blocks:
        return None
    # The LoopFM history to keep per user: the longest any channel reading the published codes asks for.
    lengths = [
        getattr(c, "max_len", LoopFMChannel.default_max_len)
        for c in blocks
        if CHANNELS[c.name].published_output == "loopfm"
    ]
    return PublishedFM(run_dir.publish_dir(model_config.fm, model_config.fm_delay), loopfm_length=max(lengths, default=1))


def train_model(
    model_config: ModelConfig, config: RunConfig, run: Path, log: EventLog, fresh: bool = False, quiet: bool = False
) -> ModelDir:
    """Train one model (skipped when trained with this config). On several ranks (torchrun, or `launch`):
    rank 0 alone prepares the model directory, then every rank trains its share (fxrec.dist)."""
    session = ranks.current()
    if session is None and sharded_checkpoint.exists(Run(run).model(model_config.name)):
        session = ranks.start(config.sharding.backend)  # a sharded run's checkpoint: resume it on this one rank
    if session is None or session.main:
        model_dir, todo = _prepare_model(model_config, config, run, log, fresh, quiet)
        todo = ranks.broadcast(todo)
    else:
        model_dir, todo = Run(run, config).model(model_config.name), ranks.broadcast(None)
    if not todo:
        return model_dir
    published = published_for(model_config, Run(run, config))
    fm_dims = published.dims if published is not None else {}
    optimizer = config.train.embedding_optimizer
    torch.manual_seed(config.train.seed)  # the initial weights too come from the run's seed
    model = build_model(
        model_config, log.spec, embedding_lr=config.train.embedding_lr, fm_dims=fm_dims, embedding_optimizer=optimizer
    )
    # FM snapshots are read back by `fxrec publish`; VMs write one per day only for the quantization monitor.
    train = config.train
    if model_config.role != "fm":
        train = train.model_copy(update={"snapshots": "all" if train.vm_snapshots else "none"})
    dispatch = Dispatch(**model_config.dispatch.kwargs())
    if session is None:
        trainer = Trainer(model, train, model_dir, progress=not quiet, published=published, dispatch=dispatch)
    else:
        trainer = ShardedTrainer(
            model, train, model_dir, session, config.sharding, progress=not quiet, published=published, dispatch=dispatch
        )
    trainer.fit(log, surfaces=model_config.surfaces)
    if session is not None:
        session.barrier()
        if session.main:
            sharded_checkpoint.clear(model_dir)  # model.pt is written: nothing left to resume
    if (session is None or session.main) and model_config.role == "fm" and model_config.name == config.fm.name:
        prune_snapshots(Run(run, config), log.days)  # at once when nothing will publish this FM
    return model_dir


def _prepare_model(
    model_config: ModelConfig, config: RunConfig, run: Path, log: EventLog, fresh: bool, quiet: bool
) -> tuple[ModelDir, bool]:
    """The model's directory, emptied when `fresh` or its config changed, with its card; and whether it
    still needs training (False: already trained with this config)."""
    run_dir = Run(run, config)
    model_dir = run_dir.model(model_config.name)
    if fresh and model_dir.root.exists():
        shutil.rmtree(model_dir.root)
    if model_dir.trained() and not _same_config(model_dir, model_config):
        console.print(f"{model_config.name}: its config changed since it was trained; training it again")
        shutil.rmtree(model_dir.root)
    if model_dir.trained():
        if not quiet:
            console.print(f"{model_config.name}: already trained ({model_dir.root}); skipping")
        return model_dir, False
    check_models([model_config], log.spec, run)
    if model_config.role == "fm":
        for stale in run_dir.publish_dirs(model_config.name):
            shutil.rmtree(stale)  # outputs of an earlier FM: publish again from the new snapshots
    published = published_for(model_config, run_dir)
    fm_dims = published.dims if published is not None else {}
    optimizer = config.train.embedding_optimizer
    torch.manual_seed(config.train.seed)  # the initial weights too come from the run's seed
    model = build_model(
        model_config, log.spec, embedding_lr=config.train.embedding_lr, fm_dims=fm_dims, embedding_optimizer=optimizer
    )
    save_model_card(model_dir.root, model_config, log, config.train.embedding_lr, fm_dims, embedding_optimizer=optimizer)
    parameters = sum(p.numel() for p in model.parameters())
    if not quiet:
        channels = ", ".join(c.name for c in model.channels) or "none"
        console.print(
            f"[bold]{model_config.name}[/] ({model_config.role}, {model_config.interaction.name}, "
            f"{len(model.features)} features, {parameters:,} parameters, surfaces: {model_config.surfaces or 'all'}, "
            f"channels: {channels})"
        )
    return model_dir, True


def _same_config(model_dir: ModelDir, model_config: ModelConfig) -> bool:
    if not model_dir.card.exists():
        return False
    # Read back through ModelConfig: a card written before a key existed gets its default (mods: all off).
    try:
        trained = ModelConfig.model_validate(yaml.safe_load(model_dir.card.read_text())["config"])
    except ValidationError:
        return False
    return trained.model_dump(mode="json") == model_config.model_dump(mode="json")


def train_fm(
    config: RunConfig, run: Path, where: Path | str | None = None, fresh: bool = False, nproc: int = 1
) -> ModelDir:
    """`fxrec train fm`: check, prepare the log, train the FM progressively (resumes from its checkpoint).
    `nproc` > 1: on that many local ranks, sharded (fxrec.dist); under torchrun, on torchrun's ranks."""
    check_models([config.fm], planned_spec(config, run), run, where)
    if nproc > 1 and not ranks.in_launched_rank():
        prepare_events(config, run)
        ranks.launch(nproc, _on_rank, "fm", config.model_dump(mode="json"), run, where, fresh, None)  # rank 0 reports
        return Run(run, config).model(config.fm.name)
    log = _events_on_ranks(config, run)
    model_dir = train_model(config.fm, config, run, log, fresh=fresh)
    if ranks.current() is None or ranks.current().main:  # type: ignore[union-attr]
        print_disk_usage(run, console)
    return model_dir


def _on_rank(role: str, raw: dict, run: Path, where: Path | str | None, fresh: bool, name: str | None) -> None:
    """One launched rank of `--nproc` (the config travels as plain data: its block classes are derived)."""
    config = RunConfig.model_validate(raw)
    if role == "fm":
        train_fm(config, run, where, fresh)
    else:
        train_vms(config, run, name, where, fresh)


def _events_on_ranks(config: RunConfig, run: Path) -> EventLog:
    """The run's log: prepared by rank 0 (simulated if need be) while the other ranks wait, then opened."""
    if ranks.in_launched_rank():
        session = ranks.start(config.sharding.backend)
        if session.main:
            prepare_events(config, run)
        session.barrier()
        return EventLog(Run(run, config).events)
    return prepare_events(config, run)


def train_vms(
    config: RunConfig,
    run: Path,
    name: str | None = None,
    where: Path | str | None = None,
    fresh: bool = False,
    nproc: int = 1,
) -> list[ModelDir]:
    """`fxrec train vm`: the expert models (all, or the one called `name`), checked before any training."""
    spec = planned_spec(config, run)
    vms = config.expand_vms(spec.surfaces)
    chosen = [v for v in vms if name is None or v.name == name]
    if not chosen:
        raise InputError(f"{where}: no VM named {name!r}; the config has {[v.name for v in vms]}")
    check_models(chosen, spec, run, where)
    if nproc > 1 and not ranks.in_launched_rank():
        prepare_events(config, run)
        ranks.launch(nproc, _on_rank, "vm", config.model_dump(mode="json"), run, where, fresh, name)  # rank 0 reports
        return [Run(run, config).model(vm.name) for vm in chosen]
    log = _events_on_ranks(config, run)
    model_dirs = [train_model(vm, config, run, log, fresh=fresh) for vm in chosen]
    if ranks.current() is None or ranks.current().main:  # type: ignore[union-attr]
        print_disk_usage(run, console)
    return model_dirs
