"""Conversions at any window, and delayed feedback, on the simulator's post-click conversion task.

The simulator's conversions follow clicks with advertiser-specific delays (log-normal around a median
between 10 minutes and 3 days, cut at the 7-day attribution window), so every event's conversion time
is known. The log here is the clicks (the conversion task as ads systems train it: post-click CVR); one
small model (the spec's VM features, every surface, DCNv2 + MLP heads) trains progressively, same log,
same seed, in these ways:

Windows (evaluated on the matured label "converted within T" at T = 1, 2, 3, 5, 7 days; 2, 3, 5 are
held out from the two-head model):
- `pi`: heads for 1 and 7 days only (`windows: {days: [1, 7]}`, each trained on events whose window
  has closed); any T by Personalized Interpolation with a per-advertiser rate β (truncated exponential
  MLE on the delays observed before the model's cutoff, shrunk toward the global rate with 20
  pseudo-delays; fxrec.objectives);
- `per_window`: a dedicated head per window (1, 2, 3, 5, 7 days): the upper bound;
- `long_only`: the 7-day head of `pi` for every window;
- `global_rate`: p_∞(1 − e^{−λT}) from the 7-day head, one global λ (the same estimator, one group).

Delayed feedback (`train.delayed_feedback`), one conversion head, scored on matured labels:
- `observed`: day t trained at its end on the conversions seen by then (fresh, biased low);
- `maturity`: day t trained 7 days later, labels final (unbiased, 8 days stale when it predicts);
- `corrected`: fresh, with the elapsed-time likelihood P(seen) = p·F(c − ts), F per advertiser;
- `oracle`: fresh and trained on conversions that have not happened yet (`train_on_matured_labels`):
  a leak no system has, the bound of what the correction can recover.

NE and calibration (mean prediction / mean label) pool the evaluation days from day 8 on (every model
has trained by then: the 7-day head and `maturity` first train at the end of day 7). Freshness: days
from the newest events whose labels the model trained on to the day it predicts.

    python bench/conversion_windows.py [--quick] [--out FILE]

A plot (NE by window; NE per day by feedback mode) is written next to the JSON (`<out>.png`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from _common import ROOT, parse_args, print_table, write_result

from fxrec.config import ModelConfig, TrainConfig
from fxrec.data.eventlog import EventLog, write_events
from fxrec.data.labels import training_cutoff
from fxrec.data.simulator import SimulatorConfig, dataset_spec, simulate
from fxrec.factory import build_model
from fxrec.metrics.ranking import calibration, relative_ne_change
from fxrec.metrics.ranking import ne as normalized_entropy
from fxrec.objectives.delays import DelayHistory
from fxrec.objectives.interpolation import exponential_window, interpolate
from fxrec.run import ModelDir
from fxrec.train.trainer import Trainer

DAY_S = 86_400
SIMULATOR = SimulatorConfig(
    seed=31, days=22, impressions_per_day=600_000, users=20_000, new_users_per_day=500
)
QUICK = {"days": 12, "impressions_per_day": 300_000, "users": 8_000, "new_users_per_day": 300}
MODEL = {
    "name": "cvr",
    "role": "vm",
    "embedding_dim": 16,
    "dense_layers": [32],
    "interaction": {"name": "dcnv2", "num_layers": 2, "low_rank": 16},
    "heads": {"kind": "shared_bottom", "hidden": [64]},
}
SHORT_DAYS, LONG_DAYS = 1, 7
WINDOWS = (1, 2, 3, 5, 7)
HELD_OUT = (2, 3, 5)
FIRST_EVAL_DAY = 8
PRIOR_EVENTS = 20.0
BATCH_SIZE = 512
THREADS = 1
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # name: (model config keys, train config keys)
    "pi": ({"tasks": [], "windows": {"days": [SHORT_DAYS, LONG_DAYS]}}, {}),
    "per_window": ({"tasks": [], "windows": {"days": list(WINDOWS)}}, {}),
    "observed": ({"tasks": ["conversion"]}, {}),
    "maturity": ({"tasks": ["conversion"]}, {"delayed_feedback": {"mode": "maturity", "wait_days": 7}}),
    "corrected": (
        {"tasks": ["conversion"]},
        {"delayed_feedback": {"mode": "corrected", "prior_events": PRIOR_EVENTS}},
    ),
    "oracle": ({"tasks": ["conversion"]}, {"train_on_matured_labels": True}),
}


def click_log(config: SimulatorConfig, name: str) -> Path:
    """The simulator's clicks (with their conversions) as an event log, cached by config and source."""
    from fxrec.data import simulator

    key = json.dumps(config.model_dump(), sort_keys=True) + Path(simulator.__file__).read_text()
    path = ROOT / ".cache" / "data" / f"clicks-{name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    if not path.exists():
        table = simulate(config, progress=False)
        write_events(table.filter(pa.compute.equal(table.column("click"), 1.0)), dataset_spec(config), path)
    return path


def train(log: EventLog, name: str, workdir: Path) -> dict[str, Any]:
    model_keys, train_keys = VARIANTS[name]
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate({**MODEL, **model_keys}), log.spec)
    config = TrainConfig(batch_size=BATCH_SIZE, threads=THREADS, snapshots="none", **train_keys)
    trainer = Trainer(model, config, workdir, progress=False)
    started = time.perf_counter()
    trainer.fit(log)
    return {"train_seconds": time.perf_counter() - started, "steps": trainer.step, "tasks": model.tasks}


def predictions(workdir: Path, days: list[str]) -> dict[str, np.ndarray]:
    tables = [pq.read_table(ModelDir(workdir).prediction(day)) for day in days]
    table = pa.concat_tables(tables)
    return {c: table.column(c).to_numpy() for c in table.column_names if c != "trained_through"} | {
        "trained_through": np.array(table.column("trained_through").to_pylist())
    }


def truth(log: EventLog, days: list[str], num_groups: int) -> dict[str, np.ndarray]:
    """Matured window labels, advertisers and each day's β (fitted at the predicting model's cutoff)."""
    history, parts = DelayHistory(), []
    for index, day in enumerate(log.days):
        table = log.read_day(day, ["event_id", "ts", "advertiser_id", "conversion", "conversion_delay_s"])
        delay = table.column("conversion_delay_s").fill_null(np.inf).to_numpy()
        columns = {c: table.column(c).to_numpy() for c in ("event_id", "ts", "advertiser_id", "conversion")}
        if day in days:  # predicted by the model trained through the day before: β as of its cutoff
            rates = history.rates(training_cutoff(log.days[index - 1]), 7 * DAY_S, num_groups, PRIOR_EVENTS)
            parts.append(
                {
                    **columns,
                    "delay": delay,
                    "beta": rates.of(columns["advertiser_id"]),
                    "global_rate": np.full(len(delay), rates.global_rate),
                    "day_index": np.full(len(delay), index),
                }
            )
        history.add(columns["ts"], columns["advertiser_id"], delay, columns["conversion"])
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    probs = np.clip(probs, 1e-7, 1 - 1e-7)
    return {"ne": normalized_entropy(labels, probs), "calibration": calibration(labels, probs)}


def plot(
    window_rows: list[dict[str, Any]], per_day: dict[str, list[float]], days: list[str], out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in ("per_window", "pi", "long_only", "global_rate"):
        rows = [r for r in window_rows if r["method"] == method]
        left.plot([r["window_days"] for r in rows], [r["ne"] for r in rows], marker="o", label=method)
    for t in HELD_OUT:
        left.axvline(t, color="grey", linewidth=0.5)
    left.set_xlabel("conversion window (days); grey: held out from the two-head model")
    left.set_ylabel("NE")
    left.set_title("NE by window: PI vs dedicated heads and baselines")
    left.legend(fontsize=8)
    for name, values in per_day.items():
        right.plot(days, values, marker="o", markersize=3, label=name)
    right.set_xlabel("evaluation day")
    right.set_ylabel("NE (conversion, matured labels)")
    right.set_title("delayed feedback: NE per day")
    right.legend(fontsize=8)
    right.tick_params(axis="x", labelrotation=45, labelsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main() -> None:
    args = parse_args("conversion_windows", __doc__.splitlines()[0])
    torch.set_num_threads(THREADS)
    simulator = SIMULATOR.model_copy(update=QUICK if args.quick else {})
    log = EventLog(click_log(simulator, "conversion-windows-quick" if args.quick else "conversion-windows"))
    days = log.days[FIRST_EVAL_DAY:]
    runs: dict[str, dict[str, Any]] = {}
    preds: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="fxrec-conversion-windows-") as tmp:
        for name in VARIANTS:
            runs[name] = train(log, name, Path(tmp) / name)
            preds[name] = predictions(Path(tmp) / name, days)
            print(f"{name}: trained in {runs[name]['train_seconds']:.1f}s ({runs[name]['steps']} steps)")
    data = truth(log, days, simulator.advertisers + 1)
    assert all(np.array_equal(p["event_id"], data["event_id"]) for p in preds.values()), "the same events"

    # -- windows ------------------------------------------------------------------------------
    pi, dedicated = preds["pi"], preds["per_window"]
    p_short, p_long = pi[f"pred_conversion_{SHORT_DAYS}d"], pi[f"pred_conversion_{LONG_DAYS}d"]
    window_rows = []
    for t in WINDOWS:
        labels = ((data["conversion"] > 0) & (data["delay"] < t * DAY_S)).astype(np.float32)
        assert np.array_equal(labels, dedicated[f"label_conversion_{t}d"]), (
            "the trainer's matured window labels"
        )
        seconds = t * DAY_S
        methods = {
            "per_window": dedicated[f"pred_conversion_{t}d"],
            "pi": interpolate(p_short, p_long, data["beta"], SHORT_DAYS * DAY_S, LONG_DAYS * DAY_S, seconds),
            "long_only": p_long,
            "global_rate": exponential_window(p_long, data["global_rate"], LONG_DAYS * DAY_S, seconds),
        }
        base = metrics(labels, methods["per_window"])
        for method, probs in methods.items():
            m = metrics(labels, probs)
            window_rows.append(
                {
                    "window_days": t,
                    "held_out": t in HELD_OUT,
                    "method": method,
                    "ne": m["ne"],
                    "ne_vs_per_window_pct": relative_ne_change(m["ne"], base["ne"]),
                    "calibration": m["calibration"],
                    "calibration_vs_per_window_pct": 100 * (m["calibration"] / base["calibration"] - 1),
                    "label_rate": float(labels.mean()),
                }
            )

    # -- delayed feedback -----------------------------------------------------------------------
    labels = (data["conversion"] > 0).astype(np.float32)
    day_of = {d: i for i, d in enumerate(log.days)}
    feedback_rows, per_day = [], {}
    for name in ("observed", "maturity", "corrected", "oracle"):
        p = preds[name]
        lag = VARIANTS[name][1].get("delayed_feedback", {}).get("wait_days", 0)
        newest = np.array([day_of[d] for d in p["trained_through"]]) - lag  # newest events trained on
        feedback_rows.append(
            {
                "mode": name,
                **metrics(labels, p["pred_conversion"]),
                "freshness_days": float(np.mean(data["day_index"] - newest)),
            }
        )
        per_day[name] = [
            metrics(labels[data["day_index"] == i], p["pred_conversion"][data["day_index"] == i])["ne"]
            for i in range(FIRST_EVAL_DAY, len(log.days))
        ]
    maturity_ne = next(r["ne"] for r in feedback_rows if r["mode"] == "maturity")
    for row in feedback_rows:
        row["ne_vs_maturity_pct"] = relative_ne_change(row["ne"], maturity_ne)

    print_table(
        f"conversion windows: NE and calibration, {len(days)} evaluation days (held out: {HELD_OUT})",
        window_rows,
    )
    print_table("delayed feedback: conversion NE and calibration on matured labels", feedback_rows)
    held = [r for r in window_rows if r["held_out"] and r["method"] == "pi"]
    goals = {
        "pi_within_0.1pct_ne_of_per_window": all(r["ne_vs_per_window_pct"] <= 0.1 for r in held),
        "pi_calibration_within_2pct_of_per_window": all(
            abs(r["calibration_vs_per_window_pct"]) <= 2 for r in held
        ),
        "pi_calibration_within_2pct_of_1": all(abs(r["calibration"] - 1) <= 0.02 for r in held),
        "corrected_beats_maturity_ne": bool(
            next(r["ne"] for r in feedback_rows if r["mode"] == "corrected") < maturity_ne
        ),
    }
    print("goals:", goals)
    png = args.out.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(window_rows, per_day, days, png)
    print(f"wrote {png}")
    ratios = {
        "pi_ne_vs_per_window_pct": {r["window_days"]: r["ne_vs_per_window_pct"] for r in held},
        "pi_calibration_vs_per_window_pct": {
            r["window_days"]: r["calibration_vs_per_window_pct"] for r in held
        },
        "feedback_ne_vs_maturity_pct": {r["mode"]: r["ne_vs_maturity_pct"] for r in feedback_rows},
    }
    write_result(
        args,
        "conversion_windows",
        window_rows + feedback_rows,
        ratios,
        goals=goals,
        simulator=simulator.model_dump(),
        model=MODEL,
        variants={k: list(v) for k, v in VARIANTS.items()},
        days=days,
        runs=runs,
        ne_per_day=per_day,
        plot=str(png),
    )


if __name__ == "__main__":
    main()
