"""The main job's stages, each reading and writing files in a run directory.

    runs/<name>/
      config.yaml                the config the run used
      events/                    the event log (simulated here, or `events:` points elsewhere)
      models/<model>/            checkpoint.pt, snapshots/day=*.pt, predictions/day=*.parquet, model.pt
      report.json, report.html

Each stage skips work that is already done (a finished model has model.pt), so a stage can be
re-run or resumed after a crash; `fresh=True` redoes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

from fxrec.config import ModelConfig, RunConfig
from fxrec.data.eventlog import SPEC_FILE, EventLog
from fxrec.data.schema import DatasetSpec
from fxrec.data.simulator import dataset_spec, simulate_to
from fxrec.errors import InputError
from fxrec.factory import MODEL_CARD, build_model, save_model_card
from fxrec.report.evaluate import ModelEntry, evaluate_run
from fxrec.report.render import write_report
from fxrec.train.trainer import Trainer
from fxrec.transfer.experiment import print_experiment, run_transfer_experiment
from fxrec.transfer.loopfm import LoopFMChannel
from fxrec.transfer.publish import publish_dir
from fxrec.transfer.published import PUBLISH_META, PublishedFM

console = Console(width=160)


def events_path(config: RunConfig, run: Path) -> Path:
    return Path(config.events) if config.events else run / "events"


def _simulates(config: RunConfig, run: Path, fresh: bool) -> bool:
    return config.events is None and (fresh or not (events_path(config, run) / SPEC_FILE).exists())


def planned_spec(config: RunConfig, run: Path, fresh: bool = False) -> DatasetSpec:
    """The DatasetSpec of the run's log, found without writing anything: an existing log's (checked to
    be one), or the spec the simulator will write. Raises InputError when there is neither."""
    if not _simulates(config, run, fresh):
        return EventLog(events_path(config, run)).spec
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
    published = publish_dir(run, model_config.fm, model_config.fm_delay) if channels else None
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
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    path = events_path(config, run)
    if _simulates(config, run, fresh):
        assert config.simulator is not None  # planned_spec checked
        console.print(f"simulating {config.simulator.days} days x {config.simulator.impressions_per_day:,} impressions -> {path}")
        simulate_to(config.simulator, path)
    return EventLog(path)


def train_model(
    model_config: ModelConfig, config: RunConfig, run: Path, log: EventLog, fresh: bool = False, quiet: bool = False
) -> Path:
    model_dir = run / "models" / model_config.name
    if fresh and model_dir.exists():
        shutil.rmtree(model_dir)
    if (model_dir / "model.pt").exists() and not _same_config(model_dir, model_config):
        console.print(f"{model_config.name}: its config changed since it was trained; training it again")
        shutil.rmtree(model_dir)
    if (model_dir / "model.pt").exists():
        if not quiet:
            console.print(f"{model_config.name}: already trained ({model_dir}); skipping")
        return model_dir
    check_models([model_config], log.spec, run)
    if model_config.role == "fm":
        for stale in (run / "publish").glob(f"{model_config.name}*"):
            shutil.rmtree(stale)  # outputs of an earlier FM: publish again from the new snapshots
    published = None
    if model_config.channel_specs():
        lengths = [c.get("max_len", LoopFMChannel.default_max_len) for c in model_config.channel_specs() if c["name"] == "loopfm"]
        published = PublishedFM(publish_dir(run, model_config.fm, model_config.fm_delay), loopfm_length=max(lengths, default=1))
    fm_dims = published.dims if published is not None else {}
    optimizer = config.train.embedding_optimizer
    torch.manual_seed(config.train.seed)  # the initial weights too come from the run's seed
    model = build_model(
        model_config, log.spec, embedding_lr=config.train.embedding_lr, fm_dims=fm_dims, embedding_optimizer=optimizer
    )
    save_model_card(model_dir, model_config, log, config.train.embedding_lr, fm_dims, embedding_optimizer=optimizer)
    parameters = sum(p.numel() for p in model.parameters())
    if not quiet:
        channels = ", ".join(c.name for c in model.channels) or "none"
        console.print(
            f"[bold]{model_config.name}[/] ({model_config.role}, {model_config.interaction.name}, "
            f"{len(model.features)} features, {parameters:,} parameters, surfaces: {model_config.surfaces or 'all'}, "
            f"channels: {channels})"
        )
    # Only FM snapshots are ever read back (by `fxrec publish`); VMs skip writing one per day.
    train = config.train if model_config.role == "fm" else config.train.model_copy(update={"keep_snapshots": False})
    Trainer(model, train, model_dir, progress=not quiet, published=published).fit(log, surfaces=model_config.surfaces)
    return model_dir


def _same_config(model_dir: Path, model_config: ModelConfig) -> bool:
    card = model_dir / MODEL_CARD
    if not card.exists():
        return False
    return yaml.safe_load(card.read_text())["config"] == model_config.model_dump(mode="json")


def entries(config: RunConfig, run: Path, surfaces: list[str]) -> list[ModelEntry]:
    """The config's models that have predictions to evaluate (`surfaces`: the log's, for `vm_per_surface`)."""
    models = [config.fm, *config.expand_vms(surfaces)]
    return [
        ModelEntry(m.name, m.role, m.surfaces, [c["name"] for c in m.channel_specs()], run / "models" / m.name / "predictions")
        for m in models
        if (run / "models" / m.name / "predictions").exists()
    ]


def evaluate_and_report(config: RunConfig, run: Path, log: EventLog, transfer: dict | None = None) -> dict:
    content = evaluate_run(log, entries(config, run, log.spec.surfaces), config.train.report_days)
    if transfer is not None:
        content["transfer"] = transfer
    json_path, html_path = write_report(content, run, title=config.name)
    print_summary(content)
    if transfer is not None:
        print_experiment(transfer)
    console.print(f"report: {json_path} and {html_path}")
    return content


def print_summary(content: dict) -> None:
    table = Table(title=f"{content['dataset']}: progressive evaluation over {len(content['eval_days'])} days")
    for column in ("model", "role", "surface", "NE", "AUC", "GAUC", "calibration", "events", "FM NE on same events"):
        table.add_column(column, justify="left" if column in ("model", "role", "surface") else "right")
    fm_on = {c["vm"]: c for c in content["comparisons"]}
    for m in content["models"]:
        comparison = fm_on.get(m["name"])
        fm_text = f"{comparison['fm_ne']:.4f} ({comparison['fm_ne_gain_pct']:+.2f}%)" if comparison else "-"
        gauc = f"{m['gauc']:.4f}" if m.get("gauc") is not None else "-"
        table.add_row(m["name"], m["role"], m["surface"], f"{m['ne']:.4f}", f"{m['auc']:.4f}", gauc, f"{m['calibration']:.3f}", f"{m['n_eval']:,}", fm_text)
    console.print(table)
    if "oracle" in content:
        console.print(f"oracle (simulator ground truth) on all evaluation events: NE {content['oracle']['ne']:.4f}, AUC {content['oracle']['auc']:.4f}")


def run_demo(config: RunConfig, run: Path, fresh: bool = False, serve: bool = True) -> dict:
    spec = planned_spec(config, run, fresh)
    check_models([config.fm, *config.expand_vms(spec.surfaces)], spec, run)
    log = prepare_events(config, run, fresh=fresh)
    train_model(config.fm, config, run, log, fresh=fresh)
    for vm in config.expand_vms(log.spec.surfaces):
        train_model(vm, config, run, log, fresh=fresh)
    transfer = run_transfer_experiment(config, run, log, fresh=fresh) if config.experiment is not None else None
    content = evaluate_and_report(config, run, log, transfer)
    if serve:
        show_serving(config, run, log, transfer)
    return content


def show_serving(config: RunConfig, run: Path, log: EventLog, transfer: dict | None) -> None:
    """End of the demo: serve the best expert of the first surface and score a few requests."""
    from fxrec.serving.demo import show_requests
    from fxrec.transfer.experiment import model_name

    vm = config.expand_vms(log.spec.surfaces)[0]
    name = vm.name
    if transfer is not None and vm.name in transfer["best"] and config.experiment is not None:
        name = model_name(vm.name, transfer["best"][vm.name]["channel_set"], 0, config.experiment.seeds[0])
    console.rule(f"serving {name}: fxrec serve --run {run} --vm {name}")
    show_requests(run, name, console=console)
