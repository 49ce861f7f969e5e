"""`fxrec experiment transfer`: how much of the FM's gain each VM captures, and by which channel.

For every VM x channel set x seed (and FM delay), the VM trains progressively on the same log and is
evaluated on the same events as the FM; the result per (VM, set, delay) is NE, AUC and calibration
(mean over seeds), the transfer ratio against the channel-less VM of the same seed, and a paired
sign-flip test against KD over (seed, evaluation day) pairs of mean log loss.

Models land in runs/<name>/models/<vm>__<set>__d<delay>__s<seed>/; re-running skips finished ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from fxrec.config import RunConfig
from fxrec.data.eventlog import EventLog
from fxrec.metrics import evaluate
from fxrec.report.evaluate import ModelEntry, load_predictions, report_days
from fxrec.store.stabilize import drift
from fxrec.transfer.publish import publish, publish_dir
from fxrec.transfer.ratio import paired_sign_flip_test, transfer_ratio

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
    from fxrec.pipeline import train_model

    experiment = config.experiment
    if experiment is None:
        raise ValueError("the config has no `experiment:` section (channel_sets, seeds, delays)")
    for required in (BASELINE,):
        if required not in experiment.channel_sets:
            raise ValueError(f"experiment.channel_sets needs a {required!r} set (the VM without transfer)")
    train_model(config.fm, config, run, log, fresh=fresh)
    for delay in sorted({0, *experiment.delays}):
        console.print(f"publishing {config.fm.name} (delay {delay} days)")
        publish(run, config, delay=delay, fresh=fresh)
    vms = config.expand_vms(log.spec.surfaces)
    jobs = [(vm, name, delay, seed) for vm in vms for name, delay in settings(config) for seed in experiment.seeds]
    with Progress(console=console) as bar:
        task = bar.add_task("transfer experiment", total=len(jobs))
        for vm, name, delay, seed in jobs:
            variant = vm.model_copy(
                update={"name": model_name(vm.name, name, delay, seed), "channels": experiment.channel_sets[name], "fm_delay": delay}
            )
            seeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
            bar.update(task, description=variant.name)
            train_model(variant, seeded, run, log, fresh=fresh, quiet=True)
            bar.advance(task)
    return evaluate_experiment(config, run, log)


def _log_loss_by_day(frame: pl.DataFrame, task: str) -> dict[str, float]:
    """Mean log loss per evaluation day: the paired unit of the test against KD. (Per-day NE would
    divide by each day's label entropy, which explodes on days with almost no positives.)"""
    return {
        day: evaluate(group[f"label_{task}"].to_numpy(), group[f"pred_{task}"].to_numpy())["log_loss"]
        for (day,), group in frame.group_by("day")
    }


def evaluate_experiment(config: RunConfig, run: Path, log: EventLog) -> dict:
    experiment = config.experiment
    assert experiment is not None
    task = log.spec.tasks[0]
    fm_frame = load_predictions(ModelEntry(config.fm.name, "fm", None, [], run / "models" / config.fm.name / "predictions"))
    days = report_days(fm_frame, config.train.report_days)
    rows: list[dict] = []
    for vm in config.expand_vms(log.spec.surfaces):
        per_setting: dict[tuple[str, int], dict[int, dict]] = {}
        fm_ne = None
        for name, delay in settings(config):
            for seed in experiment.seeds:
                directory = run / "models" / model_name(vm.name, name, delay, seed) / "predictions"
                frame = load_predictions(ModelEntry(name, "vm", vm.surfaces, [], directory)).filter(pl.col("day").is_in(days))
                metrics = evaluate(frame[f"label_{task}"].to_numpy(), frame[f"pred_{task}"].to_numpy())
                if fm_ne is None:
                    same = fm_frame.join(frame.select("event_id"), on="event_id", how="inner")
                    fm_metrics = evaluate(same[f"label_{task}"].to_numpy(), same[f"pred_{task}"].to_numpy())
                    fm_ne, fm_auc, n_eval = fm_metrics["ne"], fm_metrics["auc"], frame.height
                per_setting.setdefault((name, delay), {})[seed] = {**metrics, "by_day": _log_loss_by_day(frame, task)}
        assert fm_ne is not None
        for (name, delay), by_seed in per_setting.items():
            base = per_setting[(BASELINE, 0)]
            ratios = [transfer_ratio(base[s]["ne"], by_seed[s]["ne"], fm_ne) for s in experiment.seeds]
            row = {
                "vm": vm.name,
                "surface": ",".join(vm.surfaces or ["all"]),
                "channel_set": name,
                "delay": delay,
                "channels": [c if isinstance(c, str) else c["name"] for c in experiment.channel_sets[name]],
                "n_eval": n_eval,
                "ne": float(np.mean([m["ne"] for m in by_seed.values()])),
                "ne_std": float(np.std([m["ne"] for m in by_seed.values()])),
                "auc": float(np.mean([m["auc"] for m in by_seed.values()])),
                "calibration": float(np.mean([m["calibration"] for m in by_seed.values()])),
                "transfer_ratio": float(np.nanmean(ratios)) if not np.all(np.isnan(ratios)) else None,
                "transfer_ratio_std": float(np.nanstd(ratios)) if not np.all(np.isnan(ratios)) else None,
                "ne_change_pct_vs_none": 100 * (float(np.mean([m["ne"] for m in by_seed.values()])) / float(np.mean([m["ne"] for m in base.values()])) - 1),
                "fm_ne": fm_ne,
                "fm_auc": fm_auc,
            }
            kd = per_setting.get((KD, delay)) or per_setting.get((KD, 0))
            if kd is not None and name != KD:
                differences = [by_seed[s]["by_day"][d] - kd[s]["by_day"][d] for s in experiment.seeds for d in by_seed[s]["by_day"]]
                row["ne_minus_kd"] = row["ne"] - float(np.mean([m["ne"] for m in kd.values()]))
                row["p_vs_kd"] = paired_sign_flip_test(np.array(differences))
            rows.append(row)
    best = {}
    for row in rows:
        if row["delay"] == 0 and row["channel_set"] != BASELINE:
            current = best.get(row["vm"])
            if current is None or row["ne"] < current["ne"]:
                best[row["vm"]] = row
    return {
        "dataset": log.spec.name,
        "task": task,
        "drift": embedding_drift(publish_dir(run, config.fm.name, 0)),
        "eval_days": days,
        "seeds": list(experiment.seeds),
        "rows": rows,
        "best": {vm: {"channel_set": r["channel_set"], "ne": r["ne"], "auc": r["auc"], "transfer_ratio": r["transfer_ratio"]} for vm, r in best.items()},
    }


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
        frame = pl.read_parquet(path, columns=["user_id", "ts", "fm_version", "user"]).sort("ts")
        last = frame.group_by("user_id").agg(pl.col("user").last(), pl.col("fm_version").last())
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


def print_experiment(result: dict) -> None:
    table = Table(title=f"{result['dataset']}: transfer experiment ({len(result['seeds'])} seeds, {len(result['eval_days'])} evaluation days)")
    for column in ("VM", "channel set", "delay", "NE", "AUC", "cal", "TR", "NE vs none", "vs KD (p)", "FM NE"):
        table.add_column(column, justify="left" if column in ("VM", "channel set") else "right")
    for r in result["rows"]:
        tr = "-" if r["transfer_ratio"] is None else f"{r['transfer_ratio']:.2f}±{r['transfer_ratio_std']:.2f}"
        vs_kd = f"{100 * r['ne_minus_kd'] / (r['ne'] - r['ne_minus_kd']):+.2f}% ({r['p_vs_kd']:.3f})" if "p_vs_kd" in r else "-"
        table.add_row(
            r["vm"], r["channel_set"], str(r["delay"]), f"{r['ne']:.4f}±{r['ne_std']:.4f}", f"{r['auc']:.4f}",
            f"{r['calibration']:.3f}", tr, f"{r['ne_change_pct_vs_none']:+.2f}%", vs_kd, f"{r['fm_ne']:.4f}",
        )
    console.print(table)
    if result.get("drift"):
        changes = result["drift"]
        console.print(
            f"user-embedding drift per FM version change ({len(changes)} changes): mean cosine to the previous "
            f"version {np.mean([c['mean_cosine'] for c in changes]):.3f} raw, "
            f"{np.mean([c['stabilized_mean_cosine'] for c in changes]):.3f} served as the mean of the last 3 versions"
        )
