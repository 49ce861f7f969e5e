"""`fxrec cohorts`: which two cohorts a trained model tells apart most, as a ready `c2al:` block.

C2AL (fxrec.objectives.c2al) adds auxiliary heads for the two cohorts whose baseline predictions
diverge most. `discover(run, model, axes)` reads the model's progressive predictions (every event it
scored before training on it: no prediction saw its own label), joins the raw columns the axes read
from the run's log (`fxrec.metrics.cohorts` names the axes: a categorical column such as `surface` or
`user_cohort`, `<column>:<q>` quantile ranges, `advertiser_size`, `user_activity`), and takes the
pairwise Jensen–Shannon divergences of the prediction histograms within each axis
(`fxrec.objectives.c2al.discover_pair`). The most divergent pair, the larger cohort as the head, is
printed as the `c2al:` block to paste into a model config.

Example::

    found = discover(Path("runs/demo"), "fm", ["surface", "age_bucket", "advertiser_size"])
    print(found.yaml())
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from fxrec.errors import InputError
from fxrec.metrics.cohorts import Divergences, axis_columns
from fxrec.objectives.c2al import CohortAuxiliary, discover_pair
from fxrec.report.cohorts import cohort_columns
from fxrec.report.evaluate import ModelEntry, load_predictions
from fxrec.run import Run

DEFAULT_AXES = ("surface", "user_cohort", "advertiser_size", "user_activity")


@dataclass
class CohortDiscovery:
    """The model, the task its predictions were read for, the axes, every within-axis pair and the
    chosen `c2al:` block."""

    model: str
    task: str
    axes: list[str]
    events: int
    divergences: Divergences
    c2al: CohortAuxiliary

    def by_axis(self) -> dict[str, list[dict]]:
        """{axis: [{a, b, js, a_events, b_events}, ...]}, most divergent first within each axis."""
        out: dict[str, list[dict]] = {axis: [] for axis in self.axes}
        for (a, _, _), row in zip(self.divergences.pairs, self.divergences.rows(), strict=True):
            out[a.axis].append(row)
        return out

    def yaml(self) -> str:
        """The chosen pair as a model config's `c2al:` block."""
        return yaml.safe_dump({"c2al": self.c2al.to_dict()}, sort_keys=False, default_flow_style=None)


def _check_axes(run: Run, axes: list[str]) -> None:
    log = run.event_log()
    available = set(pq.read_schema(log.day_files(log.days[0])[0]).names)
    problems = []
    for axis in axes:
        name, _, buckets = axis.partition(":")
        if not name or (buckets and (not buckets.isdigit() or int(buckets) < 2)):
            problems.append(f"--axes: {axis!r} is not an axis (a column, <column>:<buckets >= 2>, ...)")
        elif axis_columns(axis) not in available:
            problems.append(
                f"--axes: {axis!r} reads the column {axis_columns(axis)!r}, which the run's log does not have; "
                f"columns: {', '.join(sorted(available))}"
            )
    if problems:
        raise InputError(*problems)


def discover(
    run: Path,
    model: str,
    axes: list[str] | None = None,
    task: str | None = None,
    head_weight: float = 0.5,
    tail_weight: float = 0.5,
    bins: int = 20,
    min_share: float = 0.01,
) -> CohortDiscovery:
    """The most divergent cohort pair of `model`'s predictions on `task` (default: its first task)
    along `axes` (default: those of DEFAULT_AXES the log has). InputError for an unknown model, task
    or axis."""
    handle = Run(run)
    if not handle.config_path.exists():
        raise InputError(f"{run}: not a run directory (no config.yaml)")
    model_dir = handle.model(model)
    files = sorted(model_dir.predictions.glob("day=*.parquet")) if model_dir.root.exists() else []
    if not files:
        known = sorted(
            p.name for p in handle.models.glob("*") if any((p / "predictions").glob("day=*.parquet"))
        )
        raise InputError(
            f"--model: no predictions of a model {model!r} in {run}; models with predictions: {known}"
        )
    log = handle.event_log()
    if axes is None:
        available = set(pq.read_schema(log.day_files(log.days[0])[0]).names)
        axes = [a for a in DEFAULT_AXES if axis_columns(a) in available]
    if not axes:
        raise InputError("--axes: no axis given and none of the default axes is in the log")
    _check_axes(handle, axes)
    predictions = load_predictions(ModelEntry(model, "", None, [], model_dir.predictions))
    tasks = [c.removeprefix("pred_") for c in predictions.columns if c.startswith("pred_")]
    task = task or tasks[0]
    if task not in tasks:
        raise InputError(f"--task: model {model!r} has no predictions for {task!r}; its tasks: {tasks}")
    days = predictions["day"].unique().sort().to_list()
    columns = cohort_columns(log, days, axes)
    keep = ["event_id", *dict.fromkeys(axis_columns(a) for a in axes)]
    joined = predictions.select("event_id", f"pred_{task}").join(columns.select(keep), on="event_id")
    raw = {c: joined[c].to_numpy() for c in keep if c != "event_id"}
    try:
        c2al, divergences = discover_pair(
            joined[f"pred_{task}"].to_numpy().astype(np.float64),
            raw,
            axes,
            task,
            head_weight,
            tail_weight,
            bins,
            min_share,
        )
    except ValueError as error:
        raise InputError(f"{model}: {error}") from None
    return CohortDiscovery(model, task, list(axes), joined.height, divergences, c2al)
