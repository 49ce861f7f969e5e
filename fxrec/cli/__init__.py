"""The `fxrec` command line: one sub-command per job (`fxrec.jobs`); `serve` holds the serving commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from fxrec.errors import InputError, TrainingInterrupted


class _Commands(TyperGroup):
    """fxrec's commands: bad input (an InputError anywhere below a command) is exit code 2 and one line;
    a training run stopped by `train.max_steps` (resumable) is exit code 1 and one line, on one process
    and on `--nproc N` ranks alike."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as error:
            _fail(error)
        except TrainingInterrupted as stopped:
            errors.print(f"[yellow]stopped:[/] {escape(' '.join(str(stopped).split()))}")
            raise typer.Exit(code=STOPPED_EXIT) from None


app = typer.Typer(
    cls=_Commands, help="fxrec: train one foundation model, make every expert model better with it.", no_args_is_help=True
)
data_app = typer.Typer(help="Create event logs: simulate an ads world or import a dataset.", no_args_is_help=True)
import_app = typer.Typer(help="Import a dataset into an fxrec event log.", no_args_is_help=True)
train_app = typer.Typer(help="Train the foundation model or the expert models of a run.", no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.add_typer(import_app, name="import")
app.add_typer(train_app, name="train")
experiment_app = typer.Typer(help="Experiments over a run: transfer channels x VMs x seeds.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
audience_app = typer.Typer(
    help="Audience tools: simulate a population, build a reach index, estimate a targeting query's reach.",
    no_args_is_help=True,
)
app.add_typer(audience_app, name="audience")
console = Console()
STOPPED_EXIT = 1  # `max_steps` reached: the checkpoint is written, run again to resume
errors = Console(stderr=True, soft_wrap=True, highlight=False)

ConfigOption = typer.Option(Path("configs/demo.yaml"), "--config", "-c", help="run config (YAML)")
RunOption = typer.Option(Path("runs/demo"), "--run", "-r", help="run directory")
FreshOption = typer.Option(False, "--fresh", help="redo work that is already done")


def _fail(error: Exception) -> NoReturn:
    """Exit code 2 and one line of stderr per problem: the message is the whole report, no traceback."""
    problems = error.problems if isinstance(error, InputError) and error.problems else [str(error)]
    for problem in problems:
        errors.print(f"[red]error:[/] {escape(' '.join(problem.split()))}")
    raise typer.Exit(code=2)


def _config(path: Path, events: Path | None = None):
    """A run config (InputError on a missing file, bad YAML or a bad key); `events` overrides its log."""
    from fxrec.jobs import load_run_config

    return load_run_config(path, events)


@data_app.command("simulate")
def simulate(config: Path = ConfigOption, out: Path = typer.Option(Path("runs/demo/events"), "--out", "-o")) -> None:
    """Simulate the ads world of a config's `simulator:` section into an event log."""
    from fxrec.jobs import data

    log = data.simulate(_config(config), out, where=config)
    console.print(f"wrote {log.num_rows():,} events over {len(log.days)} days to {out}")


@import_app.command("movielens-100k")
def import_movielens(out: Path = typer.Option(Path("data/movielens-100k"), "--out", "-o")) -> None:
    """MovieLens-100K from the recbole wheel on PyPI (rating >= 4 is a click)."""
    from fxrec.jobs.data import import_movielens_100k

    _report_import(lambda: import_movielens_100k(out), out)


@import_app.command("open-bandit")
def import_open_bandit(
    out: Path = typer.Option(Path("data/open-bandit"), "--out", "-o"),
    campaigns: str = typer.Option("all", help="comma-separated: all, men, women"),
    policies: str = typer.Option("random", help="comma-separated: random, bts"),
) -> None:
    """Open Bandit Dataset samples (CC BY 4.0) from the obp wheel on PyPI, merged into one log."""
    from fxrec.jobs.data import import_open_bandit as run_import

    def run() -> Path:
        return run_import(out, campaigns=campaigns.split(","), policies=policies.split(","))

    _report_import(run, out)


@import_app.command("table")
def import_table(
    files: list[Path] = typer.Argument(..., help="CSV or Parquet files"),
    spec: Path = typer.Option(..., "--spec", help="DatasetSpec + column mapping (YAML)"),
    out: Path = typer.Option(..., "--out", "-o"),
) -> None:
    """Any CSV/Parquet table, with a column mapping onto the event log."""
    from fxrec.jobs.data import import_table as run_import

    _report_import(lambda: run_import(spec, list(files), out), out)


def _report_import(run, out: Path) -> None:
    from fxrec.jobs.data import EventLogError, open_log, print_profile

    try:
        run()
    except (EventLogError, FileNotFoundError, ValueError) as error:
        _fail(error)
    log = open_log(out)
    console.print(f"wrote {log.num_rows():,} events over {len(log.days)} days to {out} (spec: {out / 'spec.yaml'})")
    print_profile(log, console)


@data_app.command("profile")
def profile(
    events: Path = typer.Argument(..., help="an event log directory"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the profile as JSON"),
) -> None:
    """Events, users, items, days, label rates per day, cardinality and nulls per column, and warnings."""
    import json

    from fxrec.jobs.data import EventLogError, open_log, print_profile

    try:
        log = open_log(events)
    except EventLogError as error:
        _fail(error)
    result = print_profile(log, console)
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2))


EventsOption = typer.Option(None, "--events", help="use this event log instead of the config's")


NprocOption = typer.Option(
    1, "--nproc", min=1, help="train on this many local ranks, tables sharded as the config's `sharding:` says"
)


@train_app.command("fm")
def train_fm(
    config: Path = ConfigOption,
    run: Path = RunOption,
    events: Path | None = EventsOption,
    fresh: bool = FreshOption,
    nproc: int = NprocOption,
) -> None:
    """Train the foundation model progressively (resumes from its checkpoint)."""
    from fxrec.jobs.train import train_fm as run_job

    run_job(_config(config, events), run, where=config, fresh=fresh, nproc=nproc)


@train_app.command("vm")
def train_vm(
    config: Path = ConfigOption,
    run: Path = RunOption,
    name: str | None = typer.Option(None, "--name", help="one VM by name (default: all)"),
    events: Path | None = EventsOption,
    fresh: bool = FreshOption,
    nproc: int = NprocOption,
) -> None:
    """Train the expert models progressively."""
    from fxrec.jobs.train import train_vms

    train_vms(_config(config, events), run, name=name, where=config, fresh=fresh, nproc=nproc)


@app.command("eval")
def evaluate(config: Path = ConfigOption, run: Path = RunOption, events: Path | None = EventsOption) -> None:
    """NE, AUC, GAUC and calibration for every trained model; writes report.json and report.html."""
    from fxrec.jobs.evaluate import evaluate as run_job

    run_job(_config(config, events), run, where=config)


@app.command("plan")
def plan(
    tables: str = typer.Option(
        "1e9x128,1e8x128*2,1e7x128*2,1e6x64*3", "--tables", help="ROWSxDIM[*COUNT][@POOLING], comma-separated"
    ),
    ranks: str = typer.Option("64,256,1024", "--ranks", help="world sizes to plan for, comma-separated"),
    group: int = typer.Option(64, "--group", help="2D: ranks a sharding group spans (replicated across groups)"),
    sync_every: int = typer.Option(1, "--sync-every", min=1, help="2D: steps between replica all-reduces (K)"),
    batch_size: int = typer.Option(512, "--batch-size", min=1, help="examples a rank a step"),
    hbm: float = typer.Option(80.0, "--hbm", help="GiB of device memory a rank"),
    sharding_types: str | None = typer.Option(None, "--sharding-types", help="only these, comma-separated"),
    out: Path | None = typer.Option(None, "--out", "-o", help="write plan.json and plan.png here"),
) -> None:
    """TorchRec's planner on a simulated cluster: per-rank memory, imbalance and traffic, 1D against 2D."""
    from fxrec.jobs.plan import plan_job

    try:
        world = [int(r) for r in ranks.split(",")]
    except ValueError:
        raise InputError(f"--ranks: comma-separated integers, got {ranks!r}") from None
    types = sharding_types.split(",") if sharding_types else None
    plan_job(tables, world, group, batch_size, sync_every, hbm, types, out, console=console)


@app.command("probe")
def probe(
    run: Path = RunOption,
    model: str | None = typer.Option(None, "--model", "-m", help="the model to probe (default: the run's FM)"),
    write_plan: bool = typer.Option(
        False, "--write-plan", help="write the dispatch plan the probe chooses into the model's card (used on every load)"
    ),
) -> None:
    """Low-precision probe: per Linear of a trained model, each format's error and speed-up, and its choice."""
    from fxrec.jobs.probe import probe_model, write_probe
    from fxrec.jobs.probe import write_plan as write_dispatch_plan

    probed = probe_model(run, model)
    path = write_probe(run, probed)
    console.print(probed.to_table(), highlight=False, markup=False)
    console.print(f"probe: {path}", highlight=False)
    if write_plan:
        plan = write_dispatch_plan(run, probed)
        low = {name: format for name, format in plan.items() if format != "fp32"}
        chosen = ", ".join(f"{name}: {format}" for name, format in low.items()) or "every Linear stays fp32"
        console.print(f"dispatch plan for {probed.model} ({len(low)} of {len(plan)} Linears): {chosen}", highlight=False)


@app.command("quantize")
def quantize(
    run: Path = RunOption,
    name: str = typer.Option(..., "--name", "-n", help="the trained model to quantize, e.g. vm_feed"),
    budget: float = typer.Option(0.02, "--budget", help="largest relative NE change allowed, in percent (0.02 = 0.02%)"),
    out: str | None = typer.Option(None, "--out", help="the quantized model's name (default: <name>_q)"),
    monitor: bool = typer.Option(False, "--monitor", help="re-check a quantized model (--name) on each snapshot of its source"),
) -> None:
    """Quantize a model for serving: int8/int4 tables and int8/bf16 Linears within an NE budget."""
    from fxrec.jobs.quantize import monitor as monitor_job
    from fxrec.jobs.quantize import quantize_job

    if monitor:
        monitor_job(run, name)
    else:
        quantize_job(run, name, budget, out)


@app.command("publish")
def publish_fm(
    config: Path | None = typer.Option(None, "--config", "-c", help="run config (default: the run's config.yaml)"),
    run: Path = RunOption,
    delay: list[int] = typer.Option([], "--delay", help="extra days of FM staleness (repeatable; default: the config's publish.delays)"),
    fresh: bool = FreshOption,
    engine: str = typer.Option("embedded", "--engine", help="where the FM runs: embedded (this process) or ray (Ray Data)"),
    address: str | None = typer.Option(None, "--address", help="with --engine ray: join the Ray cluster at host:port (default: a local Ray)"),
    actors: int = typer.Option(2, "--actors", min=1, help="with --engine ray: FM actors (one CPU each)"),
) -> None:
    """Run the FM's snapshots over the log as online: logits, user embeddings, LoopFM codes, TAEs."""
    from fxrec.jobs.publish import publish_delays

    try:
        if engine != "embedded" or address is not None:
            from fxrec.jobs.publish_ray import publish_delays_ray

            publish_delays_ray(run, config, delay, fresh, console, engine=engine, address=address, actors=actors)
            return
        publish_delays(run, config, delays=delay, fresh=fresh, console=console)
    except (FileNotFoundError, ValueError) as error:
        _fail(error)


@experiment_app.command("transfer")
def experiment_transfer(
    config: Path = typer.Option(Path("configs/transfer.yaml"), "--config", "-c", help="run config with an `experiment:` section"),
    run: Path | None = typer.Option(None, "--run", "-r", help="run directory (default: runs/<config name>)"),
    fresh: bool = FreshOption,
) -> None:
    """Every VM x channel set x seed: NE, AUC, transfer ratio, paired test vs KD; into the report."""
    from fxrec.jobs import print_disk_usage
    from fxrec.jobs.evaluate import evaluate_and_report
    from fxrec.jobs.experiment import run_transfer_experiment
    from fxrec.jobs.train import prepare_events

    run_config = _config(config)
    run = run or Path("runs") / run_config.name
    log = prepare_events(run_config, run, fresh=fresh)
    try:
        result = run_transfer_experiment(run_config, run, log, fresh=fresh)
    except (FileNotFoundError, ValueError) as error:
        _fail(error)
    evaluate_and_report(run_config, run, log, result)
    print_disk_usage(run, console)


@app.command("demo")
def demo(config: Path = ConfigOption, run: Path = RunOption, fresh: bool = FreshOption) -> None:
    """Simulate -> train FM -> train one VM per surface -> evaluate -> report."""
    from fxrec.jobs.demo import run_demo

    run_demo(_config(config), run, fresh=fresh)


@app.command("funnel")
def funnel(
    run: Path = RunOption,
    config: Path | None = typer.Option(None, "--config", "-c", help="run config (default: the run's config.yaml)"),
) -> None:
    """The ads funnel over the run's logged requests: retrieval -> early-stage ranker -> final-stage VM."""
    from fxrec.jobs.funnel import run_funnel

    run_funnel(run, _config(config) if config is not None else None)


@app.command("cohorts")
def cohorts(
    run: Path = RunOption,
    model: str = typer.Option(
        ..., "--model", "-m", help="a trained model whose predictions split the cohorts"
    ),
    axes: str | None = typer.Option(
        None,
        "--axes",
        help="comma-separated axes, e.g. surface,age_bucket,advertiser_size,user_past_impressions:4",
    ),
    task: str | None = typer.Option(
        None, "--task", help="the task whose predictions are compared (default: the first)"
    ),
) -> None:
    """C2AL cohort discovery: pairwise Jensen-Shannon divergences per axis and the chosen `c2al:` block."""
    from rich.table import Table

    from fxrec.jobs.cohorts import discover

    found = discover(run, model, [a.strip() for a in axes.split(",") if a.strip()] if axes else None, task)
    console.print(f"{found.model}: {found.task} predictions on {found.events:,} events", highlight=False)
    for axis, rows in found.by_axis().items():
        table = Table("cohort a", "cohort b", "JS", "events a", "events b", title=f"axis {axis}")
        for row in rows:
            a, b = (row[side].removeprefix(f"{axis}=") for side in ("a", "b"))
            table.add_row(a, b, f"{row['js']:.5f}", f"{row['a_events']:,}", f"{row['b_events']:,}")
        if not rows:
            table.add_row("(fewer than two cohorts)", "", "", "", "")
        console.print(table)
    console.print("chosen pair (paste into the model's config):", highlight=False)
    typer.echo(found.yaml())  # plain: a ready block, never wrapped


def _register_serving() -> None:
    from fxrec.cli.serve import register

    register(app)


_register_serving()


def _register_reach() -> None:
    from fxrec.cli.reach import register

    register(audience_app)


_register_reach()


def _register_audience_quality() -> None:
    from fxrec.cli.audience_quality import register

    register(audience_app)


_register_audience_quality()


def _register_audience_serve() -> None:
    from fxrec.cli.audience_serve import register

    register(audience_app)


_register_audience_serve()
