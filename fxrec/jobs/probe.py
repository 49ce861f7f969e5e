"""`fxrec probe` and the report's low-precision section: the LoKA probe (fxrec.lowp) on a trained model.

`probe_model(run, name)` loads the model (`Run.load_model`), hooks every nn.Linear with a `Probe`, runs
the model in eval mode over a seeded sample of the log's last day (at most `events` events, on the model's
surfaces, batched as training predicts them), and scores each Linear's candidate formats on the input
statistics it saw, with few samples and timing repeats: seconds on CPU, for a model of the demo's size.
`write_probe` keeps the result beside the model (`ModelDir.probe_json`); `probe_for_report` is the step
`evaluate_and_report` runs for the run's FM (`train.probe: false` skips it). `write_plan`
(`fxrec probe --write-plan`) turns the probe into a dispatch plan (fxrec.lowp.dispatch, with the
thresholds of the model config's `dispatch:` block; the heads' logit layers stay fp32) and writes it into
the trained model's card, which every later load applies.

The timings are of this machine, at `samples` rows per GEMM: they rank formats here, not in serving.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from fxrec.config import ModelConfig, RunConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.reader import iter_frames
from fxrec.errors import InputError
from fxrec.factory import save_dispatch_plan
from fxrec.lowp import Probe, ProbeReport
from fxrec.lowp.dispatch import Dispatch, dispatchable
from fxrec.run import Run, RunError

EVENTS = 4096  # events of the last day the model runs over: enough for stable means and covariances
SAMPLES = 256  # rows drawn per Linear to score and time each format
REPEATS = 3  # timed calls per format (the median is kept)
BATCH = 1024


@dataclass
class ProbedModel:
    """A `ProbeReport` and what it was made from: which model, which day, how many events, how long."""

    model: str
    day: str
    events: int
    seconds: float
    report: ProbeReport
    plannable: list[str] = field(default_factory=list)  # the Linears a dispatch plan may name

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "day": self.day,
            "events": self.events,
            "seconds": self.seconds,
            **self.report.to_dict(),
        }

    def to_table(self) -> str:
        return (
            f"{self.model}: {self.events:,} events of {self.day}, probed in {self.seconds:.1f} s\n"
            + self.report.to_table()
        )


def probe_model(
    run: Path | str,
    name: str | None = None,
    log: EventLog | None = None,
    events: int = EVENTS,
    samples: int = SAMPLES,
    repeats: int = REPEATS,
    seed: int = 0,
    config: RunConfig | None = None,
) -> ProbedModel:
    """Probe model `name` of `run` (default: the run's FM) on up to `events` events of the log's last day."""
    started = time.perf_counter()
    run_dir = Run(run, config)
    try:
        name = name or run_dir.config.fm.name
    except RunError as error:
        raise InputError(str(error)) from None
    if not run_dir.model(name).trained():
        raise InputError(
            f"{run_dir.root}: no trained model {name!r} to probe; trained models: {run_dir.trained_models()}"
        )
    loaded = run_dir.load_model(name)
    model = loaded.model
    if len(model.channels):
        names = [c.name for c in model.channels]
        raise InputError(
            f"model {name!r} reads transfer channels {names} from the published FM; "
            "fxrec probe runs a model on the event log alone (probe the FM, or a VM without channels)"
        )
    log = log or run_dir.event_log()
    day = log.days[-1]
    features = [log.spec.feature(f) for f in model.features]
    _, frame = next(iter_frames(log, features, days=[day], surfaces=loaded.config.surfaces))
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(frame.num_rows, generator=generator)[:events].sort().values
    model.eval()
    with Probe(model) as probe, torch.no_grad():
        for start in range(0, len(rows), BATCH):
            model(frame.take(rows[start : start + BATCH]))
    report = probe.report(samples=samples, repeats=repeats, seed=seed)
    return ProbedModel(name, day, len(rows), time.perf_counter() - started, report, list(dispatchable(model)))


def write_probe(run: Path | str, probed: ProbedModel) -> Path:
    """The probe as JSON beside its model: models/<name>/probe.json."""
    path = Run(run).model(probed.model).probe_json
    path.write_text(json.dumps(probed.to_dict(), indent=2))
    return path


def write_plan(run: Path | str, probed: ProbedModel) -> dict[str, str]:
    """The dispatch plan of the probe, written into the model's card; returns it ({Linear: format})."""
    model_dir = Run(run).model(probed.model)
    if not model_dir.card.exists():
        raise InputError(f"{model_dir.root}: no model card to write a dispatch plan into; train the model again")
    card = yaml.safe_load(model_dir.card.read_text())
    dispatch = Dispatch(**ModelConfig.model_validate(card["config"]).dispatch.kwargs())
    keep = set(probed.plannable)
    plan = {name: format for name, format in dispatch.choose(probed.report).items() if name in keep}
    save_dispatch_plan(model_dir.root, plan)
    return plan


def probe_for_report(config: RunConfig, run: Path, log: EventLog) -> dict | None:
    """The report's `probe` section: the run's FM probed and written beside it; None when the config
    turns the probe off or the FM is not trained."""
    if not config.train.probe or not Run(run, config).model(config.fm.name).trained():
        return None
    probed = probe_model(run, config.fm.name, log, config=config)
    write_probe(run, probed)
    return probed.to_dict()
