"""`fxrec eval`: NE, AUC, GAUC and calibration of every trained model of a run, into its report, with the
low-precision probe of its FM (fxrec.jobs.probe)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fxrec.config import RunConfig
from fxrec.data.eventlog import EventLog
from fxrec.errors import InputError
from fxrec.jobs.experiment import print_experiment
from fxrec.jobs.probe import probe_for_report
from fxrec.jobs.train import planned_spec, prepare_events
from fxrec.report.evaluate import ModelEntry, evaluate_run
from fxrec.report.render import write_report
from fxrec.run import Run

console = Console(width=160)


def entries(config: RunConfig, run: Path, surfaces: list[str]) -> list[ModelEntry]:
    """The config's models that have predictions to evaluate (`surfaces`: the log's, for `vm_per_surface`)."""
    run_dir = Run(run, config)
    models = [config.fm, *config.expand_vms(surfaces)]
    return [
        ModelEntry(m.name, m.role, m.surfaces, [c["name"] for c in m.channel_specs()], run_dir.model(m.name).predictions)
        for m in models
        if run_dir.model(m.name).predictions.exists()
    ]


def evaluate_and_report(config: RunConfig, run: Path, log: EventLog, transfer: dict | None = None) -> dict:
    run_dir = Run(run, config)
    content = evaluate_run(
        log,
        entries(config, run, log.spec.surfaces),
        config.train.report_days,
        config.train.bias_warmup_events,
        cohorts=config.report.cohorts,
        baseline=config.report.baseline,
        resamples=config.report.resamples,
    )
    if transfer is not None:
        content["transfer"] = transfer
    probe = probe_for_report(config, run, log)
    if probe is not None:
        content["probe"] = probe
    if run_dir.funnel_json.exists():  # `fxrec funnel` ran: the report's funnel section
        content["funnel"] = json.loads(run_dir.funnel_json.read_text())
    json_path, html_path = write_report(content, run_dir.report_json, run_dir.report_html, title=config.name)
    print_summary(content)
    if transfer is not None:
        print_experiment(transfer)
    if probe is not None:
        console.print(
            f"low-precision probe of {probe['model']}: {len(probe['layers'])} Linear layers on {probe['events']:,} events "
            f"in {probe['seconds']:.1f} s; per layer in the report (`fxrec probe --run {run}` prints it)"
        )
    console.print(f"report: {json_path} and {html_path}")
    return content


def evaluate(config: RunConfig, run: Path, where: Path | str | None = None) -> dict:
    """`fxrec eval`: evaluate the trained models of `config` in `run` (InputError when there is none)."""
    if not entries(config, run, planned_spec(config, run).surfaces):
        raise InputError(f"{Run(run).models}: no trained model of {where} to evaluate; train one first (`fxrec train fm`)")
    return evaluate_and_report(config, run, prepare_events(config, run))


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
    if content.get("warmup_days"):
        console.print(
            f"not scored: {', '.join(content['warmup_days'])} (warm-up: the models had trained on fewer than "
            f"{content['warmup_events']:,} events; train.bias_warmup_events sets the count)"
        )
    if content.get("cohorts"):
        print_cohorts(content["cohorts"])
    if "oracle" in content:
        console.print(f"oracle (simulator ground truth) on all evaluation events: NE {content['oracle']['ne']:.4f}, AUC {content['oracle']['auc']:.4f}")


def print_cohorts(cohorts: dict) -> None:
    """NE per cohort of every model, and its change against the baseline with the 95% interval."""
    table = Table(title=f"cohorts: NE on {cohorts['task']} per cohort, against {cohorts['baseline']} (95% paired bootstrap)")
    for column in ("axis", "cohort", "model", "events", "NE", "AUC", "calibration", "NE vs baseline"):
        table.add_column(column, justify="left" if column in ("axis", "cohort", "model") else "right")

    def number(value: float | None, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    for r in cohorts["rows"]:
        change = "-"
        if r.get("ne_change_pct") is not None:
            change = f"{r['ne_change_pct']:+.2f}% ({r['ne_change_low']:+.2f}..{r['ne_change_high']:+.2f})"
        table.add_row(
            r["axis"], r["cohort"], r["model"], f"{r['n_eval']:,}", number(r["ne"]), number(r["auc"]),
            number(r["calibration"], ".3f"), change,
        )
    console.print(table)
