"""`fxrec experiment transfer`: how much of the FM's gain each VM captures, and by which channel.

For every VM x channel set x seed (and FM delay), the VM trains progressively on the same log and is
evaluated on the same events as the FM. The evaluation days split in time into validation days, on
which each VM's best channel set is chosen, and later test days, on which everything is reported: per
(VM, set, delay) NE, AUC and calibration (mean over seeds), the transfer ratio of the mean NEs over
seeds (VM without channel, VM with it, FM) with a seed-bootstrap interval, and a paired sign-flip test
against KD over (seed, test day) pairs of mean log loss.

Models land in runs/<name>/models/<vm>__<set>__d<delay>__s<seed>/; re-running skips finished ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from fxrec.config import ModelConfig, RunConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.schema import DatasetSpec
from fxrec.jobs.publish import publish
from fxrec.jobs.train import train_model
from fxrec.metrics import evaluate, relative_ne_change
from fxrec.report.evaluate import ModelEntry, load_predictions, report_days, warmup_days
from fxrec.run import Run
from fxrec.store.stabilize import drift
from fxrec.transfer.ratio import paired_sign_flip_test, transfer_ratio_over_seeds
from fxrec.transfer.selection import select_channel_set, split_days

console = Console(width=160)
BASELINE, KD = "none", "kd"


def model_name(vm: str, channel_set: str, delay: int, seed: int) -> str:
    return f"{vm}__{channel_set}__d{delay}__s{seed}"


def settings(config: RunConfig) -> list[tuple[str, int]]:
    """(channel set, delay) pairs to run: every set at delay 0, the delay sets at each delay > 0."""
    experiment = config.experiment
    assert experiment is not None
    pairs = [(name, 0) for name in experiment.channel_sets]
    for delay in experiment.delays:
        if delay > 0:
            pairs += [(name, delay) for name in experiment.delay_sets]
    return pairs


def run_transfer_experiment(config: RunConfig, run: Path, log: EventLog, fresh: bool = False) -> dict:
    """Train the FM, publish it, train every VM variant, and return the experiment's table."""
    experiment = config.experiment
    if experiment is None:
        raise ValueError("the config has no `experiment:` section (channel_sets, seeds, delays)")
    for required in (BASELINE,):
        if required not in experiment.channel_sets:
            raise ValueError(f"experiment.channel_sets needs a {required!r} set (the VM without transfer)")
    # Every day after the first and after the warm-up is an evaluation day (progressive); fail on a bad
    # split before training.
    warmup = warmup_days(log, config.train.bias_warmup_events)
    evaluation_days = [d for d in log.days[1:] if d not in warmup]
    split_days(evaluation_days[-config.train.report_days :] if config.train.report_days else evaluation_days, experiment.test_days)
    train_model(config.fm, config, run, log, fresh=fresh)
    for delay in sorted({0, *experiment.delays}):
        console.print(f"publishing {config.fm.name} (delay {delay} days)")
        publish(run, config, delay=delay, fresh=fresh)
    vms = config.expand_vms(log.spec.surfaces)
    jobs = [(vm, name, delay, seed) for vm in vms for name, delay in settings(config) for seed in experiment.seeds]
    with _progress() as bar:
        task = bar.add_task("training VM variants", total=len(jobs))
        for vm, name, delay, seed in jobs:
            variant = vm.model_copy(
                update={"name": model_name(vm.name, name, delay, seed), "channels": experiment.channel_sets[name], "fm_delay": delay}
            )
            seeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
            bar.update(task, description=variant.name)
            train_model(variant, seeded, run, log, fresh=fresh, quiet=True)
            bar.advance(task)
    return evaluate_experiment(config, run, log.spec, warmup)


def _log_loss_by_day(frame: pl.DataFrame, task: str) -> dict[str, float]:
    """Mean log loss per evaluation day: the paired unit of the test against KD. (Per-day NE would
    divide by each day's label entropy, which explodes on days with almost no positives.)"""
    return {
        day: evaluate(group[f"label_{task}"].to_numpy(), group[f"pred_{task}"].to_numpy())["log_loss"]
        for (day,), group in frame.group_by("day")
    }


def _metrics(frame: pl.DataFrame, task: str) -> dict[str, float]:
    return evaluate(frame[f"label_{task}"].to_numpy(), frame[f"pred_{task}"].to_numpy())


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console,
    )


def evaluate_experiment(config: RunConfig, run: Path, spec: DatasetSpec, warmup: list[str] | None = None) -> dict:
    """The experiment's table from the predictions on disk: per VM, choose on validation days, report on test days.

    Every VM variant (channel set x delay x seed) and the FM are scored on the same events. The
    evaluation days split in time (`split_days`); each VM's channel set is the one with the lowest
    validation NE (mean over seeds) among the delay-0 sets, `none` included, so a VM that no channel
    helps on validation keeps no channel. Every number in a row (NE, AUC, calibration, transfer
    ratio, the test against KD) is on test days only; `ne_validation` is the one number the choice saw.
    """
    experiment = config.experiment
    assert experiment is not None
    task = spec.tasks[0]
    run_dir = Run(run, config)
    fm_frame = load_predictions(ModelEntry(config.fm.name, "fm", None, [], run_dir.model(config.fm.name).predictions))
    days = report_days(fm_frame, config.train.report_days, warmup)  # warm-up days (`warmup_days`) left out
    validation_days, test_days = split_days(days, experiment.test_days)
    vms = config.expand_vms(spec.surfaces)
    rows: list[dict] = []
    best: dict[str, dict] = {}
    with _progress() as bar:
        progress = bar.add_task("evaluating", total=len(vms) * len(settings(config)) * len(experiment.seeds))
        for vm in vms:
            vm_rows = _vm_rows(vm, config, run, task, fm_frame, validation_days, test_days, lambda: bar.advance(progress))
            chosen = select_channel_set({r["channel_set"]: r["ne_validation"] for r in vm_rows if r["delay"] == 0})
            for row in vm_rows:
                row["selected"] = row["delay"] == 0 and row["channel_set"] == chosen
                if row["selected"]:
                    best[vm.name] = {
                        key: row[key]
                        for key in (
                            "channel_set", "ne_validation", "ne", "auc", "calibration", "transfer_ratio", "transfer_ratio_low",
                            "transfer_ratio_high", "transfer_ratio_reason", "ne_change_pct_vs_none", "baseline_ne", "fm_ne",
                        )
                    }
            rows += vm_rows
    return {
        "dataset": spec.name,
        "task": task,
        "drift": embedding_drift(run_dir.publish_dir(config.fm.name, 0)),
        "eval_days": days,
        "validation_days": validation_days,
        "test_days": test_days,
        "selection": "lowest validation NE (mean over seeds) among the delay-0 channel sets, none included; ties by name",
        "seeds": list(experiment.seeds),
        "rows": rows,
        "best": best,
    }


def _vm_rows(
    vm: ModelConfig,
    config: RunConfig,
    run: Path,
    task: str,
    fm_frame: pl.DataFrame,
    validation_days: list[str],
    test_days: list[str],
    advance: Callable[[], None],
) -> list[dict]:
    """One row per (channel set, delay) of one VM: validation NE, test metrics, transfer ratio, test vs KD."""
    experiment = config.experiment
    assert experiment is not None
    seeds = list(experiment.seeds)
    validation: dict[tuple[str, int], dict[int, dict]] = {}
    test: dict[tuple[str, int], dict[int, dict]] = {}
    events: np.ndarray | None = None  # (N_test,) sorted event ids every variant must be scored on
    fm_metrics: dict[str, float] | None = None  # the FM on those events
    for name, delay in settings(config):
        for seed in seeds:
            directory = Run(run).model(model_name(vm.name, name, delay, seed)).predictions
            frame = load_predictions(ModelEntry(name, "vm", vm.surfaces, [], directory))
            on_validation = frame.filter(pl.col("day").is_in(validation_days))
            on_test = frame.filter(pl.col("day").is_in(test_days))
            ids = np.sort(on_test["event_id"].to_numpy())
            if events is None:
                events = ids
                fm_test = fm_frame.join(on_test.select("event_id"), on="event_id", how="inner")
                if fm_test.height != on_test.height:
                    raise ValueError(f"FM predictions cover {fm_test.height} of VM {vm.name!r}'s {on_test.height} test events")
                fm_metrics = _metrics(fm_test, task)
            elif not np.array_equal(ids, events):
                raise ValueError(f"{model_name(vm.name, name, delay, seed)} was tested on other events than {vm.name}'s other variants")
            validation.setdefault((name, delay), {})[seed] = _metrics(on_validation, task)
            test.setdefault((name, delay), {})[seed] = {**_metrics(on_test, task), "by_day": _log_loss_by_day(on_test, task)}
            advance()
    assert fm_metrics is not None
    base = test[(BASELINE, 0)]
    base_ne = np.array([base[s]["ne"] for s in seeds])  # (S,)
    rows = []
    for (name, delay), by_seed in test.items():
        ne = np.array([by_seed[s]["ne"] for s in seeds])  # (S,)
        ratio = transfer_ratio_over_seeds(base_ne, ne, fm_metrics["ne"])
        row = {
            "vm": vm.name,
            "surface": ",".join(vm.surfaces or ["all"]),
            "channel_set": name,
            "delay": delay,
            "channels": [c.name for c in experiment.channel_sets[name]],
            "n_eval_validation": validation[(name, delay)][seeds[0]]["n_eval"],
            "n_eval": by_seed[seeds[0]]["n_eval"],
            "ne_validation": float(np.mean([validation[(name, delay)][s]["ne"] for s in seeds])),
            "ne": float(ne.mean()),
            "ne_std": float(ne.std()),
            "ne_by_seed": [float(v) for v in ne],
            "auc": float(np.mean([by_seed[s]["auc"] for s in seeds])),
            "calibration": float(np.mean([by_seed[s]["calibration"] for s in seeds])),
            "transfer_ratio": ratio.value,
            "transfer_ratio_low": ratio.low,
            "transfer_ratio_high": ratio.high,
            "transfer_ratio_reason": ratio.reason,
            "ne_change_pct_vs_none": relative_ne_change(float(ne.mean()), float(base_ne.mean())),
            "baseline_ne": float(base_ne.mean()),
            "fm_ne": fm_metrics["ne"],
            "fm_auc": fm_metrics["auc"],
        }
        kd = test.get((KD, delay)) or test.get((KD, 0))
        if kd is not None and name != KD:
            differences = [by_seed[s]["by_day"][d] - kd[s]["by_day"][d] for s in seeds for d in by_seed[s]["by_day"]]
            row["ne_minus_kd"] = row["ne"] - float(np.mean([kd[s]["ne"] for s in seeds]))
            row["p_vs_kd"] = paired_sign_flip_test(np.array(differences))
        rows.append(row)
    return rows


def embedding_drift(directory: Path, k: int = 3) -> list[dict]:
    """Per FM version change: how far users' published embeddings move (users in both versions),
    raw (newest vs previous version) and stabilized (mean of the last k versions, before vs after)."""
    import pyarrow.parquet as pq

    files = sorted(directory.glob("day=*.parquet"))
    if not files or "user" not in pq.read_schema(files[0]).names:
        return []
    history: dict[int, list[np.ndarray]] = {}
    changes = []
    for path in files:
        frame = pl.read_parquet(path, columns=["user_id", "ts", "fm_version", "user"]).sort("ts", maintain_order=True)
        last = frame.group_by("user_id", maintain_order=True).agg(pl.col("user").last(), pl.col("fm_version").last())
        users, vectors = last["user_id"].to_numpy(), np.array(last["user"].to_list(), dtype=np.float32)
        both = [i for i, u in enumerate(users) if u in history]
        if both:
            previous = np.stack([history[users[i]][-1] for i in both])
            stable_before = np.stack([np.mean(history[users[i]][-k:], axis=0) for i in both])
            stable_after = np.stack([np.mean((history[users[i]] + [vectors[i]])[-k:], axis=0) for i in both])
            raw, stable = drift(previous, vectors[both]), drift(stable_before, stable_after)
            changes.append({
                "fm_version": int(last["fm_version"][0]), "users": len(both),
                "centroid_shift": raw.centroid_shift, "mean_cosine": raw.mean_cosine,
                "stabilized_centroid_shift": stable.centroid_shift, "stabilized_mean_cosine": stable.mean_cosine,
            })
        for i, user in enumerate(users):
            history.setdefault(int(user), []).append(vectors[i])
    return changes


def _ratio_text(row: dict) -> str:
    if row["transfer_ratio"] is None:
        return "undefined"
    if row["transfer_ratio_low"] is None:
        return f"{row['transfer_ratio']:.2f}"
    return f"{row['transfer_ratio']:.2f} ({row['transfer_ratio_low']:.2f}..{row['transfer_ratio_high']:.2f})"


def print_experiment(result: dict) -> None:
    validation, test = result["validation_days"], result["test_days"]
    table = Table(
        title=f"{result['dataset']}: transfer experiment ({len(result['seeds'])} seed(s)); set chosen on validation days "
        f"{validation[0]}..{validation[-1]}, every number on test days {test[0]}..{test[-1]}"
    )
    for column in ("VM", "channel set", "delay", "val NE", "NE", "AUC", "cal", "TR (95% seeds)", "NE vs none", "vs KD (p)", "FM NE"):
        table.add_column(column, justify="left" if column in ("VM", "channel set") else "right")
    for r in result["rows"]:
        vs_kd = f"{100 * r['ne_minus_kd'] / (r['ne'] - r['ne_minus_kd']):+.2f}% ({r['p_vs_kd']:.3f})" if "p_vs_kd" in r else "-"
        spread = f"±{r['ne_std']:.4f}" if len(result["seeds"]) > 1 else ""  # one seed has no spread to show
        table.add_row(
            r["vm"], f"[bold]{r['channel_set']} *[/]" if r["selected"] else r["channel_set"], str(r["delay"]),
            f"{r['ne_validation']:.4f}", f"{r['ne']:.4f}{spread}", f"{r['auc']:.4f}", f"{r['calibration']:.3f}",
            _ratio_text(r), f"{r['ne_change_pct_vs_none']:+.2f}%", vs_kd, f"{r['fm_ne']:.4f}",
        )
    console.print(table)
    console.print("* the set chosen for the VM: lowest validation NE (mean over seeds) at delay 0")
    for vm, chosen in result["best"].items():
        if chosen["transfer_ratio"] is None:
            console.print(f"{vm}: transfer ratio undefined: {chosen['transfer_ratio_reason']}")
    if result.get("drift"):
        changes = result["drift"]
        console.print(
            f"user-embedding drift per FM version change ({len(changes)} changes): mean cosine to the previous "
            f"version {np.mean([c['mean_cosine'] for c in changes]):.3f} raw, "
            f"{np.mean([c['stabilized_mean_cosine'] for c in changes]):.3f} served as the mean of the last 3 versions"
        )
