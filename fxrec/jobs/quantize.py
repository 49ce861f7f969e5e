"""`fxrec quantize`: a trained model quantized for serving within an NE budget, and its drift monitor.

`quantize_model(run, name, budget)` runs the greedy NE-budget search (fxrec.lowp.budget) on events of
the last day the model trained on (at most `events`, the model's surfaces, its transfer channels fed
from the published FM as in training), then scores the chosen plan once on the log's last day, which no
model of the run trained on. It writes a model directory beside the original (default
`models/<name>_q`): the model card with the plan (`quantization:`) and the quantized weights, which
`fxrec.factory.load_model` (hence `fxrec serve --vm <name>_q`) loads; and `quantize.json` with the search,
the bytes and the held-out NE change.

`monitor(run, name)` re-checks a quantized model's plan on every daily snapshot of its source model
(`train.vm_snapshots: true` keeps them for VMs; the FM keeps its own): each day's float32 model and
its quantized twin scored on the next day's events, the relative NE change per day and whether it
drifted past the budget. Without snapshots it checks the final model on the last day.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.table import Table

from fxrec.data.batches import EventFrame
from fxrec.data.eventlog import EventLog
from fxrec.data.reader import iter_frames
from fxrec.errors import InputError
from fxrec.factory import DISPATCH_PLAN, MODEL_CARD, load_model
from fxrec.jobs.train import published_for
from fxrec.lowp.budget import DEFAULT_BUDGET, BudgetResult, relative_changes, search
from fxrec.lowp.quantize import QuantPlan, model_bytes, quantize
from fxrec.metrics.ranking import ne
from fxrec.models.checkpoint import load, model_state, save_atomic
from fxrec.run import LoadedModel, ModelDir, Run, RunError

console = Console(width=160)
EVENTS = 50_000  # events of the search day: the NE change of a plan is paired, so this is plenty
BATCH = 4096
SUFFIX = "_q"
QUANTIZE_JSON = "quantize.json"
MONITOR_JSON = "monitor.json"


def frame_ne(model: torch.nn.Module, frame: EventFrame) -> dict[str, float]:
    """NE per task of `model` on `frame` (eval mode, batches of BATCH)."""
    model.eval()
    probs: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in frame.batches(BATCH):
            for task, logits in model(batch).logits.items():
                probs.setdefault(task, []).append(torch.sigmoid(logits).double().numpy())
    return {task: float(ne(frame.labels[task].numpy(), np.concatenate(p))) for task, p in probs.items()}


@dataclass
class EvalDays:
    """The events a model is quantized on and judged on: its surfaces, its channels attached."""

    run: Run
    loaded: LoadedModel
    log: EventLog

    def frame(self, day: str, events: int | None = None, seed: int = 0) -> EventFrame:
        model, config = self.loaded.model, self.loaded.config
        features = [self.log.spec.feature(f) for f in model.features]
        _, frame = next(iter_frames(self.log, features, days=[day], surfaces=config.surfaces))
        if events is not None and frame.num_rows > events:
            generator = torch.Generator().manual_seed(seed)
            frame = frame.take(torch.randperm(frame.num_rows, generator=generator)[:events].sort().values)
        published = published_for(config, self.run)
        if published is not None:
            for channel in model.channels:
                channel.attach(frame, published)
        return frame


def _check_quantizable(run_dir: Run, name: str) -> None:
    if not run_dir.model(name).trained():
        raise InputError(
            f"{run_dir.root}: no trained model {name!r}; trained models: {run_dir.trained_models()}"
        )
    log = run_dir.event_log()
    if len(log.days) < 2:
        raise InputError(
            f"{run_dir.events} has {len(log.days)} day(s); quantizing needs a trained day and a held-out one"
        )


@dataclass
class QuantizedModel:
    name: str
    source: str
    search_day: str
    held_out_day: str
    result: BudgetResult
    held_out_ne_fp32: dict[str, float]
    held_out_ne: dict[str, float]
    seconds: float

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "search_day": self.search_day,
            "held_out_day": self.held_out_day,
            "held_out_ne_fp32": self.held_out_ne_fp32,
            "held_out_ne": self.held_out_ne,
            "held_out_relative_ne_change": relative_changes(self.held_out_ne, self.held_out_ne_fp32),
            "seconds": self.seconds,
            "search": self.result.to_dict(),
        }


def quantize_model(
    run: Path | str,
    name: str,
    budget: float = DEFAULT_BUDGET,
    out: str | None = None,
    events: int = EVENTS,
    progress: bool = True,
) -> QuantizedModel:
    """Search, write and score a quantized `name` (see the module doc); `budget` is relative (2e-4 = 0.02%)."""
    started = time.perf_counter()
    run_dir = Run(run)
    try:
        _check_quantizable(run_dir, name)
    except RunError as error:
        raise InputError(str(error)) from None
    out = out or f"{name}{SUFFIX}"
    if out == name:
        raise InputError(f"--out {out!r} would overwrite the model it quantizes")
    log = run_dir.event_log()
    search_day, held_out_day = log.days[-2], log.days[-1]
    loaded = run_dir.load_model(name)
    days = EvalDays(run_dir, loaded, log)
    search_frame = days.frame(search_day, events)
    say = console.print if progress else None
    if say is not None:
        say(
            f"{name}: searching a plan within {budget:.4%} NE on {search_frame.num_rows:,} events of {search_day}"
        )
    result = search(loaded.model, lambda m: frame_ne(m, search_frame), budget, progress=say)
    held_out = days.frame(held_out_day)
    quantized = quantize(loaded.model, result.plan)
    record = QuantizedModel(
        name=out,
        source=name,
        search_day=search_day,
        held_out_day=held_out_day,
        result=result,
        held_out_ne_fp32=frame_ne(loaded.model, held_out),
        held_out_ne=frame_ne(quantized, held_out),
        seconds=0.0,
    )
    target = run_dir.model(out)
    if target.root.exists():
        shutil.rmtree(target.root)
    target.root.mkdir(parents=True)
    card = yaml.safe_load(run_dir.model(name).card.read_text())
    card.pop(DISPATCH_PLAN, None)  # the quantization plan names every Linear's format
    card.update(quantization=result.plan.to_dict(), quantized_from=name, trained_through=loaded.version)
    (target.root / MODEL_CARD).write_text(yaml.safe_dump(card, sort_keys=False))
    if run_dir.model(name).delay_rates_json.exists():  # window heads: the same delay rates serve window_s
        shutil.copyfile(run_dir.model(name).delay_rates_json, target.delay_rates_json)
    save_atomic(model_state(quantized), target.weights)
    record.seconds = time.perf_counter() - started
    (target.root / QUANTIZE_JSON).write_text(json.dumps(record.to_dict(), indent=2))
    return record


def print_quantized(record: QuantizedModel) -> None:
    result = record.result
    table = Table(title=f"{record.source} -> {record.name}: NE budget {result.budget:.4%}")
    for column in ("part", "format", "NE change alone (cheapest)"):
        table.add_column(column)
    for kind, name in result.plan.parts():
        cost = result.costs.get(f"{kind}:{name}", 0.0)
        table.add_row(f"{kind} {name}", result.plan.format((kind, name)), f"{cost:+.4%}")
    console.print(table)
    held_out = relative_changes(record.held_out_ne, record.held_out_ne_fp32)
    console.print(
        f"bytes {result.bytes_fp32:,} -> {result.bytes:,} ({result.bytes / result.bytes_fp32:.2f}x); "
        f"NE change on {record.search_day} (search) "
        + ", ".join(f"{t} {c:+.4%}" for t, c in result.changes.items())
        + f"; on {record.held_out_day} (held out) "
        + ", ".join(f"{t} {c:+.4%}" for t, c in held_out.items())
        + f"; {result.evaluations} evaluations in {record.seconds:.1f} s",
        highlight=False,
    )


def monitor(run: Path | str, name: str, progress: bool = True) -> dict:
    """The drift check of quantized model `name` on its source's snapshots (module doc); writes monitor.json."""
    run_dir = Run(run)
    target = run_dir.model(name)
    if not target.card.exists():
        raise InputError(
            f"{run_dir.root}: no model {name!r}; quantize one first (`fxrec quantize --run {run} --name VM`)"
        )
    card = yaml.safe_load(target.card.read_text())
    if "quantization" not in card:
        raise InputError(
            f"model {name!r} is not quantized (its card has no plan); quantize it with `fxrec quantize`"
        )
    source = card["quantized_from"]
    plan = QuantPlan.from_dict(card["quantization"])
    budget = json.loads((target.root / QUANTIZE_JSON).read_text())["search"]["budget"]
    log = run_dir.event_log()
    days = EvalDays(run_dir, run_dir.load_model(source), log)
    source_dir: ModelDir = run_dir.model(source)
    versions = [(day, source_dir.snapshot(day)) for day in source_dir.snapshot_days() if day < log.days[-1]]
    if not versions:
        versions = [(log.days[-2], source_dir.weights)]
    model, _, _ = load_model(source_dir.root)
    rows = []
    for day, weights in versions:
        model.load_state_dict(load(weights))
        model.eval()
        scored_on = log.days[log.days.index(day) + 1]
        frame = days.frame(scored_on)
        fp32, quantized = frame_ne(model, frame), frame_ne(quantize(model, plan), frame)
        changes = relative_changes(quantized, fp32)
        worst = max(abs(c) for c in changes.values())
        rows.append(
            {
                "trained_through": day,
                "scored_on": scored_on,
                "ne_fp32": fp32,
                "ne": quantized,
                "relative_ne_change": changes,
                "drifted": worst > budget,
            }
        )
        if progress:
            flag = "DRIFT" if worst > budget else "ok"
            console.print(
                f"{name}: model of {day} on {scored_on}: NE change {worst:+.4%} ({flag})", highlight=False
            )
    summary = {
        "model": name,
        "source": source,
        "budget": budget,
        "plan_bytes": model_bytes(quantize(model, plan)),
        "days": rows,
        "drifted_days": [r["trained_through"] for r in rows if r["drifted"]],
    }
    (target.root / MONITOR_JSON).write_text(json.dumps(summary, indent=2))
    return summary


def quantize_job(run: Path, name: str, budget_percent: float, out: str | None) -> QuantizedModel:
    """The CLI's entry: budget in percent (0.02 = 0.02%)."""
    if budget_percent < 0:
        raise InputError(
            f"--budget is a relative NE change in percent >= 0 (0.02 = 0.02%), got {budget_percent}"
        )
    record = quantize_model(run, name, budget_percent / 100.0, out=out)
    print_quantized(record)
    console.print(
        f"quantized model: {Run(run).model(record.name).root} (serve it with `fxrec serve --vm {record.name}`)"
    )
    return record
