"""C2AL: overall and minority-cohort NE with and without the cohort auxiliary heads.

Two datasets, a chronological 80/10/10 split of each (train / valid / test, by event id), one small
FM on every feature with the attention-FM interaction (G = X Xᵀ Y, the backbone C2AL's analysis reads):

- the simulator, whose users carry a cohort (2: the ~5% minority, night-active, video-loving, steeper
  response to relevance); the log here adds each event's `user_cohort` (the world's own draw) as a
  column that is not a feature. Axes: user_cohort, surface, age_bucket, device, advertiser_size,
  user_past_impressions:4 (activity). The minority is user_cohort = 2.
- MovieLens-100K (ratings >= 4 are clicks), axes gender and age_bucket. The minority is the smaller
  cohort of the discovered pair.

Per dataset: a baseline (seed 0) is trained (epochs with early stopping on validation AUC,
`fxrec.train.holdout`); its validation predictions are split along the axes and the most divergent pair
(Jensen–Shannon of the prediction histograms) becomes C2AL's head and tail (`discover_pair`). Then
baseline and C2AL (λ = 0.5 each) train for 3 seeds. Test NE overall and on the minority: the seed
means, and the relative NE change of C2AL against the baseline with a paired bootstrap over users (95%).
The density of Y (Gini of |Y|; share of entries above 10% of the largest) with and without C2AL.

    python bench/c2al.py [--quick] [--out FILE]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import pyarrow as pa
import torch
from _common import ROOT, parse_args, print_table, write_result

from fxrec.config import ModelConfig, TrainConfig
from fxrec.data.eventlog import EventLog, write_events
from fxrec.data.simulator import AdsWorld, SimulatorConfig, dataset_spec, simulate
from fxrec.data.sources import import_movielens_100k, movielens_split_points
from fxrec.data.sources.movielens import split_points
from fxrec.factory import build_model
from fxrec.metrics.bootstrap import ne_difference
from fxrec.metrics.ranking import ne
from fxrec.objectives.c2al import CohortAuxiliary, discover_pair
from fxrec.train.holdout import SplitFrames, fit_holdout, split_by_event_id
from fxrec.train.trainer import Trainer

DATA = ROOT / ".cache" / "data"
SIMULATOR = SimulatorConfig(seed=5, days=8, impressions_per_day=60_000, users=6_000, new_users_per_day=150)
QUICK_SIMULATOR = {"days": 5, "impressions_per_day": 24_000, "users": 3_000, "new_users_per_day": 60}
AXES = {
    "simulator": [
        "user_cohort",
        "surface",
        "age_bucket",
        "device",
        "advertiser_size",
        "user_past_impressions:4",
    ],
    "movielens": ["gender", "age_bucket"],
}
MODEL = {
    "name": "fm",
    "role": "fm",
    "tasks": ["click"],
    "embedding_dim": 16,
    "dense_layers": [32],
    "interaction": {"name": "attention_fm", "compressed": 8, "output_tokens": 4},
    "heads": {"kind": "shared_bottom", "hidden": [64]},
}
WEIGHT = 0.5  # λ of each auxiliary head
SEEDS = (0, 1, 2)
RESAMPLES = 1000
THREADS = 1


def simulator_log(config: SimulatorConfig) -> Path:
    """The simulator's log plus `user_cohort` (not a feature), cached by config and simulator source."""
    import hashlib

    from fxrec.data import simulator

    key = json.dumps(config.model_dump(), sort_keys=True) + Path(simulator.__file__).read_text()
    path = DATA / f"simulated-c2al-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    if not path.exists():
        table = simulate(config, progress=False)
        cohort = AdsWorld(config).user_cohort  # the first draws of the world: the same users as `simulate`
        table = table.append_column("user_cohort", pa.array(cohort[table.column("user_id").to_numpy()]))
        write_events(table, dataset_spec(config), path)
    return path


def load(name: str, quick: bool) -> tuple[EventLog, tuple[int, int]]:
    if name == "simulator":
        log = EventLog(simulator_log(SIMULATOR.model_copy(update=QUICK_SIMULATOR if quick else {})))
        return log, split_points(log.read_all(["event_id"]).column("event_id").to_numpy())
    path = DATA / "movielens-100k"
    if not path.exists():
        import_movielens_100k(path)
    log = EventLog(path)
    return log, movielens_split_points(log)


def columns_of(log: EventLog, names: list[str], event_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The raw columns of the given events (by event id)."""
    table = log.read_all(["event_id", *names])
    ids = table.column("event_id").to_numpy()
    order = np.argsort(ids)
    rows = order[np.searchsorted(ids, event_ids, sorter=order)]
    out = {}
    for name in names:
        column = table.column(name)
        values = column.to_numpy(zero_copy_only=False)
        out[name] = np.asarray(values)[rows]
    return out


def train(
    log: EventLog, frames: SplitFrames, seed: int, c2al: CohortAuxiliary | None, columns: dict, quick: bool
) -> tuple[Trainer, dict[str, Any]]:
    keys = dict(MODEL) | ({"c2al": c2al.to_dict()} if c2al is not None else {})
    torch.manual_seed(seed)
    model = build_model(ModelConfig.model_validate(keys), log.spec)
    config = TrainConfig(batch_size=512, threads=THREADS, snapshots="none", seed=seed, dense_lr=2e-3)
    trainer = Trainer(model, config, Path(tempfile.gettempdir()) / "fxrec-c2al-bench", progress=False)
    if c2al is not None:
        built = CohortAuxiliary.of(model)
        frames = SplitFrames(built.add_labels(frames.train, columns["train"]), frames.valid, frames.test)
    started = time.perf_counter()
    result = fit_holdout(trainer, frames, max_epochs=1 if quick else 4, patience=1, task="click")
    return trainer, {
        "seconds": time.perf_counter() - started,
        "best_epoch": result.best_epoch,
        "test": result.test,
    }


def run_dataset(name: str, quick: bool) -> dict[str, Any]:
    log, (train_end, valid_end) = load(name, quick)
    features = log.spec.select(None, "fm")
    frames = split_by_event_id(log, features, train_end, valid_end)
    axes = AXES[name]
    from fxrec.metrics.cohorts import axis_columns

    wanted = list(dict.fromkeys(axis_columns(a) for a in axes))
    columns = {
        split: columns_of(log, wanted, getattr(frames, split).meta["event_id"].numpy())
        for split in ("train", "valid", "test")
    }
    baselines, c2als, runs = [], [], []
    base0, run = train(log, frames, SEEDS[0], None, columns, quick)
    runs.append({"model": "baseline", "seed": SEEDS[0], **run})
    c2al, divergences = discover_pair(
        base0.predict(frames.valid)["click"], columns["valid"], axes, "click", WEIGHT, WEIGHT
    )
    print(
        f"{name}: discovered head {c2al.head.label}, tail {c2al.tail.label} (JS {divergences.pairs[0][2]:.4f})"
    )
    baselines.append(base0)
    for seed in SEEDS[1:]:
        trainer, run = train(log, frames, seed, None, columns, quick)
        baselines.append(trainer)
        runs.append({"model": "baseline", "seed": seed, **run})
    for seed in SEEDS:
        trainer, run = train(log, frames, seed, c2al, columns, quick)
        c2als.append(trainer)
        runs.append({"model": "c2al", "seed": seed, **run})

    test = frames.test
    labels = test.labels["click"].numpy().astype(np.float64)
    users = test.meta["user_id"].numpy()
    base_p = [t.predict(test)["click"] for t in baselines]
    c2al_p = [t.predict(test)["click"] for t in c2als]
    if name == "simulator":
        minority_mask = columns["test"]["user_cohort"] == 2
        minority = "user_cohort=2"
    else:
        minority_mask = c2al.tail.mask(columns["test"])
        minority = c2al.tail.label
    slices = {"overall": np.ones(len(labels), dtype=bool), f"minority ({minority})": minority_mask}
    slices[f"head ({c2al.head.label})"] = c2al.head.mask(columns["test"])
    slices[f"tail ({c2al.tail.label})"] = c2al.tail.mask(columns["test"])
    rows = []
    for slice_name, mask in slices.items():
        change = ne_difference(
            labels[mask], [p[mask] for p in c2al_p], [p[mask] for p in base_p], users[mask], RESAMPLES
        )
        rows.append(
            {
                "dataset": name,
                "slice": slice_name,
                "events": int(mask.sum()),
                "share": float(mask.mean()),
                "baseline_ne": float(np.mean([ne(labels[mask], p[mask]) for p in base_p])),
                "c2al_ne": float(np.mean([ne(labels[mask], p[mask]) for p in c2al_p])),
                "ne_change_pct": change["ne_change_pct"],
                "ne_change_low": change["ne_low"],
                "ne_change_high": change["ne_high"],
                "p_c2al_better": change["p_a_better"],
            }
        )
    density = {
        model: [t.model.interaction.y_density() for t in trainers]
        for model, trainers in (("baseline", baselines), ("c2al", c2als))
    }
    density_rows = [
        {
            "dataset": name,
            "model": model,
            "y_gini": float(np.mean([d["gini"] for d in values])),
            "y_share_above_10pct": float(np.mean([d["share_above_10pct_of_max"] for d in values])),
        }
        for model, values in density.items()
    ]
    return {
        "rows": rows,
        "density_rows": density_rows,
        "y_density": density,
        "pair": c2al.to_dict(),
        "divergences": divergences.rows()[:20],
        "runs": runs,
        "splits": {"train_end": train_end, "valid_end": valid_end, **frames.sizes()},
    }


def main() -> None:
    args = parse_args("c2al", __doc__.splitlines()[0])
    torch.set_num_threads(THREADS)
    results = {name: run_dataset(name, args.quick) for name in ("simulator", "movielens")}
    rows = [r for result in results.values() for r in result["rows"]]
    density_rows = [r for result in results.values() for r in result["density_rows"]]
    print_table(
        "C2AL vs baseline: test NE (mean of 3 seeds), relative change with a paired user bootstrap (95%)",
        rows,
    )
    print_table("density of the attention FM's Y (mean of 3 seeds)", density_rows)
    goals = {}
    for name, result in results.items():
        overall = next(r for r in result["rows"] if r["slice"] == "overall")
        minority = next(r for r in result["rows"] if r["slice"].startswith("minority"))
        goals[name] = {
            "overall_ne_at_most_-0.1pct": overall["ne_change_pct"] <= -0.1,
            "minority_ne_at_least_0.3pct_better": minority["ne_change_pct"] <= -0.3,
        }
    print("goals:", goals)
    ratios = {
        f"{r['dataset']}:{r['slice']}": {
            "ne_change_pct": r["ne_change_pct"],
            "low": r["ne_change_low"],
            "high": r["ne_change_high"],
        }
        for r in rows
    }
    write_result(
        args,
        "c2al",
        rows + density_rows,
        ratios,
        goals=goals,
        model=MODEL,
        weight=WEIGHT,
        seeds=list(SEEDS),
        axes=AXES,
        simulator=SIMULATOR.model_copy(update=QUICK_SIMULATOR if args.quick else {}).model_dump(),
        datasets={
            name: {k: v for k, v in result.items() if k not in ("rows", "density_rows")}
            for name, result in results.items()
        },
    )


if __name__ == "__main__":
    main()
