"""fxrec's backbones against peer libraries, each tuned by the same search: test AUC / log loss.

Datasets: MovieLens-100K, the simulator's log (SIMULATOR), the Open Bandit import of all six
samples. Each log is split chronologically by event id (first 80% train, next 10% valid, last 10%
test; `split_points`), with histories computed once over the whole log (fxrec.train.holdout), and
every model trains on the same rows and the same features: ids, demographics / context,
multi-valued lists, dense columns and the user's last clicks before the event.

Models: fxrec DCNv2, DHEN, InterFormer, Kunlun (ModelConfig with `interaction: {name: ...}`, i.e.
each backbone's constructor defaults); DeepCTR-Torch's DCN (DCN-M) and DIN model classes; FuxiCTR's
DCNv2 and DIN built from FuxiCTR layers (bench/_peers.py says how). Architecture is each library's
default, except what all models share: embedding dim EMBEDDING_DIM and the MLP tower TOWER.

Protocol, identical for every model:
1. Search (validation only): the same `--trials` settings of bench/_search.py's SEARCH_SPACE
   (Adam learning rate on all parameters, batch size, L2 on the embedding rows), each trained once
   (seed 0) for at most MAX_EPOCHS epochs with early stopping on validation AUC (PATIENCE epochs);
   the setting with the best validation AUC is selected. The test split is not read.
2. Final (test, once): the selected setting is retrained with `--seeds` fresh seeds (1..S), each
   run's best validation epoch restored and scored on test once. The selected trial, its search
   validation AUC and the final runs' validation AUC are recorded beside the test metrics.
3. Report: per dataset, mean +- std test AUC / log loss over the final seeds, and the best fxrec
   backbone minus the best peer (each library's best by the final runs' validation AUC) in test
   AUC, with the paired, user-clustered bootstrap interval of fxrec.metrics.bootstrap (also fxrec
   DCNv2 minus each peer's DCN).

Runs are cached per (dataset, model, trial or seed) under bench/parts/quality_peers/ (bench/_parts.py;
committed, so parts run in different sessions add up), so the work can run in parts, in any order;
`--report` combines the cached runs into
bench/results/quality_peers.json, the only result file.

    python bench/quality_peers.py --quick             # about a minute: a slice, 2 trials, 3 models
    python bench/quality_peers.py --plan              # time each model on a slice, print the parts
    python bench/quality_peers.py --datasets D --models A,B --trials 8 --seeds 3 [--trial-range I:J] --resume
    python bench/quality_peers.py --report --trials 8 --seeds 3

The full run, as `--plan` split it into parts of at most 45 minutes each (one thread a part, so two
parts can run side by side on two cores; estimates extrapolated from one epoch on a slice, every run
at MAX_EPOCHS, so upper bounds; about 1.8 h of runs for MovieLens, 4.8 h for the simulator, 0.9 h for
Open Bandit). Each line is `python bench/quality_peers.py ARGS --trials 8 --seeds 3 --resume`; a
model's part without --trial-range runs its final seeds and goes after its other parts:

    --datasets movielens --models fxrec_interformer,fuxictr_din,fxrec_dhen   # ~45 min
    --datasets movielens --models deepctr_din,deepctr_dcn,fuxictr_dcnv2,fxrec_dcnv2   # ~36 min
    --datasets movielens --models fxrec_kunlun   # ~26 min
    --datasets simulator --models fxrec_interformer --trial-range 0:5   # ~41 min
    --datasets simulator --models fxrec_interformer --trial-range 5:6   # ~8 min
    --datasets simulator --models fxrec_interformer   # ~41 min
    --datasets simulator --models fxrec_kunlun --trial-range 0:3   # ~16 min
    --datasets simulator --models fxrec_kunlun   # ~42 min
    --datasets simulator --models deepctr_din --trial-range 0:3   # ~16 min
    --datasets simulator --models deepctr_din   # ~42 min
    --datasets simulator --models fuxictr_din,deepctr_dcn   # ~42 min
    --datasets simulator --models fxrec_dhen,fuxictr_dcnv2,fxrec_dcnv2   # ~43 min
    --datasets open_bandit --models deepctr_din,fxrec_interformer,fxrec_kunlun,deepctr_dcn,fxrec_dhen   # ~44 min
    --datasets open_bandit --models fuxictr_din,fuxictr_dcnv2,fxrec_dcnv2   # ~10 min

    python bench/quality_peers.py --report --trials 8 --seeds 3
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import pyarrow as pa
import torch
from _common import ROOT, parse_args, print_table, simulated_log, write_result
from _parts import RunCache, plan_parts
from _peers import (
    DEEPCTR_MODELS,
    FUXICTR_MODELS,
    PEER_MODELS,
    PeerData,
    feature_columns,
    fit_fuxictr,
    fit_peer,
    frame_to_peer,
    max_lengths,
    test_metrics,
)
from _search import SEARCH_SEED, SEARCH_SPACE, Trial, sample_trials, select_trial

from fxrec.config import FMConfig, TrainConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.schema import FeatureSpec
from fxrec.data.simulator import SimulatorConfig
from fxrec.data.sources import import_movielens_100k, import_open_bandit, movielens_split_points, open_bandit
from fxrec.data.sources.movielens import split_points
from fxrec.factory import build_model
from fxrec.metrics.bootstrap import auc_difference
from fxrec.train.holdout import SplitFrames, fit_holdout, split_by_event_id, split_by_mask
from fxrec.train.trainer import Trainer

DATA = ROOT / ".cache" / "data"
RUNS = ROOT / "bench" / "parts" / "quality_peers"  # tracked: parts run in different sessions and checkouts
QUICK_RUNS = ROOT / ".cache" / "quality_peers_quick"  # --quick slices: scratch, not kept
DATASETS = ("movielens", "simulator", "open_bandit")
FXREC_MODELS = {"fxrec_dcnv2": "dcnv2", "fxrec_dhen": "dhen", "fxrec_interformer": "interformer", "fxrec_kunlun": "kunlun"}  # fmt: skip
MODELS = (*FXREC_MODELS, *PEER_MODELS)
QUICK_MODELS = ("fxrec_dcnv2", "deepctr_dcn", "fuxictr_dcnv2")
# Shared by every model: the only architecture settings not left at a library's default.
EMBEDDING_DIM = 16
TOWER = (128, 64)  # the MLP over the interaction output (fxrec's default heads)
MAX_EPOCHS = 6
PATIENCE = 2  # epochs without a better validation AUC before stopping; the best epoch is kept
SEARCH_TRAINING_SEED = 0  # the search trains each trial once; the final runs use seeds 1..S
PART_BUDGET_S = 45 * 60
BOOTSTRAP_RESAMPLES = 2000
# Below this a test AUC difference says nothing (one positive: AUC is its rank) and most bootstrap
# draws hold no positive.
MIN_TEST_POSITIVES = 20
SIMULATOR = SimulatorConfig(
    seed=11,
    days=5,
    impressions_per_day=60_000,
    users=3_000,
    new_users_per_day=100,
    ads=600,
    new_ads_per_day=40,
    advertisers=120,
)


def library(model: str) -> str:
    return "fxrec" if model in FXREC_MODELS else "deepctr" if model in DEEPCTR_MODELS else "fuxictr"


# -- data --------------------------------------------------------------------------------------------
def load_dataset(name: str) -> tuple[EventLog, tuple[int, int]]:
    """The event log and its (train_end, valid_end) event ids; imported or simulated once, cached."""
    if name == "simulator":
        path = simulated_log(SIMULATOR, "quality")
    else:
        path = DATA / {"movielens": "movielens-100k", "open_bandit": "open-bandit-6"}[name]
    if not path.exists() and name == "movielens":
        import_movielens_100k(path)
    elif not path.exists():  # all six samples (campaigns x policies)
        import_open_bandit(path, campaigns=open_bandit.CAMPAIGNS, policies=open_bandit.POLICIES)
    log = EventLog(path)
    if name == "movielens":
        return log, movielens_split_points(log)
    return log, split_points(log.read_all(["event_id"]).column("event_id").to_numpy())


def slice_masks(table: pa.Table, train_end: int, valid_end: int, size: int = 3_000) -> dict[str, np.ndarray]:
    """A slice for --quick and --plan: the last 2*`size` training events, the first `size` of valid and test."""
    ids = table.column("event_id").to_numpy()
    return {
        "train": (ids < train_end) & (ids >= train_end - 2 * size),
        "valid": (ids >= train_end) & (ids < train_end + size),
        "test": (ids >= valid_end) & (ids < valid_end + size),
    }


@dataclass
class Prepared:
    """One dataset's splits, as fxrec frames and as the peers' padded arrays (the same rows)."""

    log: EventLog
    features: list[FeatureSpec]
    frames: SplitFrames
    peer: dict[str, PeerData]  # split -> arrays
    columns: list  # DeepCTR feature columns

    def split(self) -> dict[str, int]:
        return {
            **self.frames.sizes(),
            **{f"{s}_positives": int(self.peer[s].labels.sum()) for s in ("train", "valid", "test")},
        }


def prepare(dataset: str, sliced: bool) -> Prepared:
    log, (train_end, valid_end) = load_dataset(dataset)
    features = list(log.spec.features)
    if sliced:  # histories still come from the whole log
        frames = split_by_mask(log, features, partial(slice_masks, train_end=train_end, valid_end=valid_end))
    else:
        frames = split_by_event_id(log, features, train_end, valid_end)
    lengths = max_lengths([frames.train, frames.valid, frames.test], features, log.spec.history_length)
    peer = {s: frame_to_peer(getattr(frames, s), features, lengths) for s in ("train", "valid", "test")}
    return Prepared(log, features, frames, peer, feature_columns(log.spec, features, EMBEDDING_DIM, lengths))


# -- one training run ----------------------------------------------------------------------------------
Fitted = tuple[dict[str, Any], Callable[[], np.ndarray]]  # (validation record, test predictions, once)


def fit(
    model: str, data: Prepared, trial: Trial, seed: int, epochs: int, patience: int, threads: int
) -> Fitted:
    """Train `model` with `trial`'s setting, early-stopped on validation; the best epoch restored.

    Returns the validation record and a function giving the restored model's (N_test,) test
    probabilities: the only way to the test split, called by the final step alone.
    """
    if model in FXREC_MODELS:
        torch.manual_seed(seed)
        config = FMConfig(
            name=model,
            role="fm",
            tasks=["click"],
            embedding_dim=EMBEDDING_DIM,
            interaction={"name": FXREC_MODELS[model]},
            heads={"kind": "shared_bottom", "hidden": list(TOWER)},
        )
        train = TrainConfig(
            seed=seed,
            threads=threads,
            batch_size=trial.batch_size,
            dense_lr=trial.lr,
            embedding_optimizer="adam",  # the peers' optimiser: the search's L2 is Adam's weight decay
            embedding_lr=trial.lr,
            embedding_weight_decay=trial.embedding_l2,
        )
        net = build_model(config, data.log.spec, embedding_lr=trial.lr, embedding_optimizer="adam")
        trainer = Trainer(net, train, Path("/tmp/fxrec-quality-peers"), progress=False)
        result = fit_holdout(trainer, data.frames, max_epochs=epochs, patience=patience, score_test=False)
        record = {
            "best_epoch": result.best_epoch,
            "valid_auc": result.valid["auc"],
            "valid_curve": [e.valid["auc"] for e in result.epochs],
        }
        return record, lambda: trainer.predict(data.frames.test)["click"]
    knobs = {"lr": trial.lr, "batch_size": trial.batch_size, "embedding_l2": trial.embedding_l2}
    if model in FUXICTR_MODELS:
        record, predict = fit_fuxictr(
            model, data.log.spec, data.features, data.peer["train"], data.peer["valid"], seed,
            EMBEDDING_DIM, max_epochs=epochs, patience=patience, hidden=TOWER, **knobs,
        )  # fmt: skip
    else:
        record, predict = fit_peer(
            model, data.columns, data.features, data.peer["train"], data.peer["valid"], seed,
            max_epochs=epochs, patience=patience, hidden=TOWER, **knobs,
        )  # fmt: skip
    return record, lambda: predict(data.peer["test"])


# -- the search and the final runs, resumable ------------------------------------------------------------
@dataclass
class Protocol:
    trials: int
    seeds: int
    epochs: int
    patience: int
    threads: int
    resume: bool

    def trial_list(self) -> list[Trial]:
        return sample_trials(self.trials)


def run_dataset(
    dataset: str,
    models: list[str],
    protocol: Protocol,
    cache: RunCache,
    trial_range: range | None,
    sliced: bool,
) -> None:
    """The missing search trials (only those in `trial_range`, a search-only part, if given); without
    a range, then the final seeds of every model, whose search is complete by then."""
    trials = protocol.trial_list()
    data: Prepared | None = None

    def cached(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
        found = cache.load(path) if protocol.resume else None
        return found if found is not None and found["config"] == expected else None

    for model in models:
        for k in trial_range if trial_range is not None else range(protocol.trials):
            path = cache.trial_path(dataset, model, k)
            if cached(path, trials[k].as_dict()) is not None:
                continue
            data = data or prepare(dataset, sliced)
            started = time.perf_counter()
            record, _ = fit(
                model,
                data,
                trials[k],
                SEARCH_TRAINING_SEED,
                protocol.epochs,
                protocol.patience,
                protocol.threads,
            )  # the test predictions are not asked for: the search reads validation only
            record |= {"trial": k, "config": trials[k].as_dict(), "seed": SEARCH_TRAINING_SEED}
            record |= {"seconds": time.perf_counter() - started, "train_rows": data.frames.train.num_rows}
            cache.save(path, record)
            print(
                f"{dataset:11s} {model:18s} trial {k} {trials[k]}: valid AUC {record['valid_auc']:.4f}",
                flush=True,
            )
        if trial_range is not None:
            continue
        search = {k: cache.load(cache.trial_path(dataset, model, k)) for k in range(protocol.trials)}
        if any(r is None or r["config"] != trials[k].as_dict() for k, r in search.items()):
            raise RuntimeError(f"{dataset}/{model}: a search trial vanished from {cache.dir}")
        chosen = select_trial({k: r["valid_auc"] for k, r in search.items()})  # type: ignore[index]
        for seed in range(1, protocol.seeds + 1):
            path = cache.final_path(dataset, model, protocol.trials, seed)
            if cached(path, trials[chosen].as_dict()) is not None:
                continue
            data = data or prepare(dataset, sliced)
            started = time.perf_counter()
            record, predict_test = fit(
                model, data, trials[chosen], seed, protocol.epochs, protocol.patience, protocol.threads
            )
            probs = np.asarray(predict_test(), dtype=np.float32)  # the one read of the test split
            record |= test_metrics(data.peer["test"].labels, probs)
            record |= {"trial": chosen, "config": trials[chosen].as_dict(), "seed": seed}
            record |= {
                "search_valid_auc": search[chosen]["valid_auc"],
                "seconds": time.perf_counter() - started,
            }  # type: ignore[index]
            cache.save(path, record, probs)
            users = data.frames.test.meta["user_id"].numpy()
            cache.save_test_rows(dataset, labels=data.peer["test"].labels, users=users, **data.split())
            print(
                f"{dataset:11s} {model:18s} final (trial {chosen}) seed {seed}: valid AUC {record['valid_auc']:.4f}, "
                f"test AUC {record['test_auc']:.4f}",
                flush=True,
            )


# -- the report ----------------------------------------------------------------------------------------
def paired(
    dataset: str, a: str, b: str, finals: dict[str, list[dict]], cache: RunCache, trials: int
) -> dict[str, float]:
    """The paired, user-clustered bootstrap of model a's seed-mean test AUC minus model b's."""
    with np.load(cache.test_rows_path(dataset)) as rows:
        labels, users = rows["labels"], rows["users"]

    def probs(model: str) -> list[np.ndarray]:
        return [cache.load_probs(cache.final_path(dataset, model, trials, r["seed"])) for r in finals[model]]

    return auc_difference(labels, probs(a), probs(b), users, resamples=BOOTSTRAP_RESAMPLES)


def report(
    datasets: list[str], models: list[str], protocol: Protocol, cache: RunCache, args: argparse.Namespace
) -> None:
    """Combine the cached runs into one table and the comparisons; write args.out."""
    rows: list[dict[str, Any]] = []
    runs: dict[str, dict[str, Any]] = {}
    ratios: dict[str, Any] = {}
    missing: list[str] = []
    for dataset in datasets:
        finals: dict[str, list[dict]] = {}
        for model in models:
            search = [cache.load(cache.trial_path(dataset, model, k)) for k in range(protocol.trials)]
            final = [
                cache.load(cache.final_path(dataset, model, protocol.trials, s))
                for s in range(1, protocol.seeds + 1)
            ]
            if any(r is None for r in [*search, *final]):
                missing.append(f"{dataset}/{model}")
                continue
            finals[model] = final  # type: ignore[assignment]
            runs.setdefault(dataset, {})[model] = {"search": search, "final": final}
            test_auc = np.array([r["test_auc"] for r in final])  # type: ignore[index]
            test_loss = np.array([r["test_log_loss"] for r in final])  # type: ignore[index]
            rows.append({
                "dataset": dataset, "model": model, "library": library(model),
                "trial": final[0]["trial"], **final[0]["config"],  # type: ignore[index]
                "search_valid_auc": final[0]["search_valid_auc"],  # type: ignore[index]
                "valid_auc": float(np.mean([r["valid_auc"] for r in final])),  # type: ignore[index]
                "test_auc": float(test_auc.mean()), "auc_std": float(test_auc.std()),
                "test_logloss": float(test_loss.mean()), "logloss_std": float(test_loss.std()),
                "best_epochs": ",".join(str(r["best_epoch"]) for r in final),  # type: ignore[index]
                "seconds": float(np.mean([r["seconds"] for r in [*search, *final]])),  # type: ignore[index]
            })  # fmt: skip
        if not finals:
            continue
        with np.load(cache.test_rows_path(dataset)) as saved:
            split = {k: int(saved[k]) for k in saved.files if k not in ("labels", "users")}
        runs.setdefault(dataset, {})["split"] = split
        ratios[dataset] = compare(
            dataset, [r for r in rows if r["dataset"] == dataset], finals, split, cache, protocol.trials
        )
    write_result(
        args,
        "quality_peers",
        rows,
        ratios,
        runs=runs,
        settings=settings(protocol),
        complete=not missing,
        missing=missing,
    )
    if rows:
        print_table(
            "test AUC / log loss over the final seeds (setting chosen by the search on validation)", rows
        )
    for dataset, entry in ratios.items():
        interval = entry.get("best_fxrec_minus_best_peer_bootstrap")
        if interval is not None:
            print(
                f"{dataset}: {entry['best_fxrec']} - {entry['best_peer']} test AUC {interval['difference']:+.4f}, "
                f"95% [{interval['low']:+.4f}, {interval['high']:+.4f}] over {interval['clusters']} test users, "
                f"fxrec ahead in {interval['p_a_ahead']:.0%} of draws"
            )
    if missing:
        print(f"incomplete, no cached runs yet for: {', '.join(missing)}")


def compare(
    dataset: str,
    rows: list[dict[str, Any]],
    finals: dict[str, list[dict]],
    split: dict[str, int],
    cache: RunCache,
    trials: int,
) -> dict[str, Any]:
    """Best fxrec minus best peer (each side's best by validation AUC), and fxrec DCNv2 minus each
    peer's DCN, in test AUC with the paired bootstrap interval."""
    by_model = {r["model"]: r for r in rows}
    entry: dict[str, Any] = {"test_positives": split["test_positives"]}
    informative = split["test_positives"] >= MIN_TEST_POSITIVES
    if not informative:
        entry["note"] = f"uninformative: the test split has {split['test_positives']} positive(s)"
    pairs = [("fxrec_dcnv2", peer) for peer in ("deepctr_dcn", "fuxictr_dcnv2")]
    fxrec = [m for m in by_model if m in FXREC_MODELS]
    peers = [m for m in by_model if m in PEER_MODELS]
    if fxrec and peers:
        best_fxrec = max(fxrec, key=lambda m: by_model[m]["valid_auc"])
        best_peer = max(peers, key=lambda m: by_model[m]["valid_auc"])
        entry.update(best_fxrec=best_fxrec, best_peer=best_peer)
        pairs.insert(0, (best_fxrec, best_peer))
    for position, (a, b) in enumerate(pairs):
        if a not in by_model or b not in by_model or (position and (a, b) == pairs[0]):
            continue
        name = "best_fxrec_minus_best_peer" if position == 0 and "best_fxrec" in entry else f"{a}_minus_{b}"
        entry[f"{name}_auc"] = by_model[a]["test_auc"] - by_model[b]["test_auc"]
        if informative:  # a bootstrap over a handful of positives is no interval either
            entry[f"{name}_bootstrap"] = paired(dataset, a, b, finals, cache, trials)
    return entry


def settings(protocol: Protocol) -> dict[str, Any]:
    return {
        "search_space": SEARCH_SPACE, "search_seed": SEARCH_SEED, "trials": [t.as_dict() for t in protocol.trial_list()],
        "final_seeds": list(range(1, protocol.seeds + 1)), "max_epochs": protocol.epochs, "patience": protocol.patience,
        "embedding_dim": EMBEDDING_DIM, "tower": list(TOWER), "threads": protocol.threads,
        "simulator": SIMULATOR.model_dump(),
        "optimizer": "Adam at the trial's lr on every parameter; the trial's embedding_l2 as Adam weight decay "
        "on the embedding tables only (fxrec: embedding_optimizer adam, embedding_weight_decay)",
        "fuxictr": "FuxiCTR 2.3.10 layers (FeatureEmbeddingDict on an in-memory FeatureMap, CrossNetV2, "
        "DIN_Attention, MLP_Block) assembled as model_zoo DCNv2 / DIN at their defaults; see bench/_peers.py",
    }  # fmt: skip


# -- the plan ----------------------------------------------------------------------------------------------
def plan(datasets: list[str], models: list[str], protocol: Protocol) -> None:
    """Time one epoch of every model on a slice of each dataset (the search's smallest batch, the
    slowest per row), extrapolate to a full run at MAX_EPOCHS, and print parts of <= PART_BUDGET_S."""
    slowest = min(protocol.trial_list(), key=lambda t: t.batch_size)
    run_seconds: dict[tuple[str, str], float] = {}
    warm: set[str] = set()
    for dataset in datasets:
        data = prepare(dataset, sliced=True)
        log, (train_end, valid_end) = load_dataset(dataset)
        ids = log.read_all(["event_id"]).column("event_id").to_numpy()
        full_rows = int(
            (ids < valid_end).sum()
        )  # train + valid rows: each epoch trains on one, scores the other
        sliced_rows = data.frames.train.num_rows + data.frames.valid.num_rows
        for model in models:
            if model not in warm:  # a model's first run in a process pays one-off costs (kernel setup)
                fit(model, data, slowest, 0, 1, 1, protocol.threads)
                warm.add(model)
            started = time.perf_counter()
            fit(model, data, slowest, 0, 1, 1, protocol.threads)
            per_row = (time.perf_counter() - started) / sliced_rows
            run_seconds[(dataset, model)] = per_row * full_rows * protocol.epochs
            print(
                f"{dataset:11s} {model:18s} ~{run_seconds[(dataset, model)] / 60:5.1f} min a run", flush=True
            )
    for dataset in datasets:
        total = sum(s for (d, _), s in run_seconds.items() if d == dataset) * (
            protocol.trials + protocol.seeds
        )
        print(
            f"{dataset}: ~{total / 3600:.1f} h for {protocol.trials} trials + {protocol.seeds} seeds per model"
        )
    for part in plan_parts(run_seconds, protocol.trials, protocol.seeds, PART_BUDGET_S):
        print(f"# ~{part.seconds / 60:.0f} min\n{part.command(protocol.trials, protocol.seeds)}")
    print(f"python bench/quality_peers.py --report --trials {protocol.trials} --seeds {protocol.seeds}")


def main() -> None:
    args = parse_args(
        "quality_peers",
        __doc__.splitlines()[0],
        [
            (("--datasets",), {"default": ",".join(DATASETS)}),
            (("--models",), {"default": None, "help": f"default: all ({','.join(MODELS)}); --quick: {','.join(QUICK_MODELS)}"}),
            (("--trials",), {"type": int, "default": 8, "help": "search trials per model (the same for all)"}),
            (("--seeds",), {"type": int, "default": 3, "help": "final runs of the selected setting"}),
            (("--trial-range",), {"default": None, "help": "I:J: only search trials I..J-1, no final seeds (a part)"}),
            (("--threads",), {"type": int, "default": 1}),
            (("--resume",), {"action": "store_true", "help": "keep cached runs (default: rerun them)"}),
            (("--report",), {"action": "store_true", "help": "combine the cached runs into --out"}),
            (("--plan",), {"action": "store_true", "help": "estimate the full run and split it into parts"}),
        ],
    )  # fmt: skip
    torch.set_num_threads(args.threads)
    datasets = ["movielens"] if args.quick else args.datasets.split(",")
    models = args.models.split(",") if args.models else list(QUICK_MODELS if args.quick else MODELS)
    unknown = [m for m in models if m not in MODELS] + [d for d in datasets if d not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown models / datasets {unknown}; known: {MODELS}, {DATASETS}")
    if args.quick:  # a slice, 2 trials, 1 seed, 2 epochs; written beside the cache, not over the results
        protocol = Protocol(trials=2, seeds=1, epochs=2, patience=1, threads=args.threads, resume=args.resume)
        if args.out == ROOT / "bench" / "results" / "quality_peers.json":
            args.out = QUICK_RUNS / "quick.json"
    else:
        protocol = Protocol(args.trials, args.seeds, MAX_EPOCHS, PATIENCE, args.threads, args.resume)
    cache = RunCache(QUICK_RUNS if args.quick else RUNS, {
        "search_space": SEARCH_SPACE, "search_seed": SEARCH_SEED, "max_epochs": protocol.epochs,
        "patience": protocol.patience, "embedding_dim": EMBEDDING_DIM, "tower": TOWER, "sliced": args.quick,
        "simulator": SIMULATOR.model_dump(),
    })  # fmt: skip
    if args.plan:
        plan(datasets, models, protocol)
        return
    if not args.report:
        trial_range = None
        if args.trial_range:
            start, stop = (int(x) for x in args.trial_range.split(":"))
            trial_range = range(start, min(stop, protocol.trials))
        for dataset in datasets:
            run_dataset(dataset, models, protocol, cache, trial_range, args.quick)
    if args.report or args.quick:
        report(datasets, models, protocol, cache, args)


if __name__ == "__main__":
    main()
