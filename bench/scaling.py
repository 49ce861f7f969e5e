"""Scaling efficiency: NE against training compute for InterFormer and Kunlun, fitted NE = a - eta * ln(FLOPs).

A ladder of model sizes per family (embedding dim, layers, heads, FFN / interaction widths; the
keys are the interaction constructors' arguments) trains on the same chronological split of a
simulated ads log, several seeds per size, and the test NE is fitted against the dense training
FLOPs per example. Every size sees the same training rows the same number of times, so
ln(training FLOPs) = ln(FLOPs per example) + a constant and eta is the same on either axis.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` over one forward + backward of a batch,
divided by the batch size: matmuls, attention and convolutions are counted, fxrec's own jagged
attention and GDPA kernels included (`fxrec.ops.flops`: over each example's real history length,
only the (query, key) pairs a causal mask or sliding window allows, backward = 2x forward); embedding
lookups (TBE / EmbeddingCollection), element-wise ops and norms are not, so these are *dense matmul*
FLOPs.

eta comes with two uncertainties: the standard error of the least-squares slope over every
(size, seed) run, and a bootstrap over seeds (each size's seeds resampled with replacement, the
line refitted on the per-size means); the eta ratio's interval is the bootstrap's. The oracle NE
(the simulator's true click probabilities on the same test rows) is the floor no model can beat.
Kunlun's paper reports an eta about 2x InterFormer's (research/arch.md §3).

    python bench/scaling.py [--quick] [--out FILE] [--seeds N] [--first-seed S] [--data-scale K]
        [--rungs 0,1,3,4] [--families interformer,kunlun] [--epochs E] [--history-length L]
        [--world default|drifting|intent] [--combine A.json,B.json]

`--data-scale K` simulates K times the impressions per day over the same days, users and ads, and
trains on K times the rows (the data-rich check: is the log, not the model, what limits NE?);
`--rungs` keeps only those ladder rungs (0-based) of each family; `--world` picks a variant of the
simulated log (below); `--families` and `--first-seed` split a run across processes, and
`--combine a.json,b.json,...` reports their runs together (part files belong under .cache/, the one
result file is `results/scaling.json`). What the runs found is in the README's benchmark section.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import pyarrow as pa
import torch
from _common import parse_args, print_table, simulated_log, write_result
from torch.utils.flop_counter import FlopCounterMode

from fxrec.config import FMConfig, TrainConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.simulator import SimulatorConfig
from fxrec.data.sources.movielens import split_points
from fxrec.factory import build_model
from fxrec.metrics.ranking import ne as normalized_entropy
from fxrec.models.ranking import RankingModel
from fxrec.train.holdout import SplitFrames, fit_holdout, split_by_mask
from fxrec.train.trainer import Trainer

SIMULATOR = SimulatorConfig(
    seed=23,
    days=10,
    impressions_per_day=40_000,
    users=3_000,
    new_users_per_day=100,
    ads=600,
    new_ads_per_day=40,
    advertisers=120,
)
# --world drifting: interests drift fast and new users keep arriving, so a user's recent clicks
# say more than their id embedding, learned on older days, can.
WORLDS = {
    "default": {},
    "drifting": {"interest_drift": 0.2, "new_users_per_day": 600},
    # --world intent: the default log plus short-term intent (SimulatorConfig.intent_strength): part of
    # each click's chance comes from the order of the user's recent clicks, which no id holds.
    "intent": {"intent_strength": 2.0},
}
BATCH_SIZE = 1024
THREADS = 1  # 2 shared cores: one thread keeps the timings comparable across runs
TRAIN_ROWS = 240_000  # the most recent training events
EVAL_ROWS = 30_000  # the first rows of the validation and test splits
MAX_EPOCHS, PATIENCE = 1, 1  # --epochs sets the epochs; the best validation epoch is scored
SEEDS = 3
HEADS = {"hidden": [128, 64]}
FAMILIES = ("interformer", "kunlun")


@dataclass(frozen=True)
class Size:
    """One rung of a ladder: the embedding (= token) dim and the interaction's constructor arguments."""

    family: str
    embedding_dim: int
    interaction: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.interaction.items())
        return f"d={self.embedding_dim},{args}"


def ladder(family: str, rungs: list[tuple[int, dict[str, Any]]], **common: Any) -> list[Size]:
    """One Size per (dim, arguments) rung; `common` arguments go to every rung."""
    return [Size(family, dim, {**args, **common}) for dim, args in rungs]


# Width and depth grow together, as in the papers' ladders; both families cover the same range,
# about 0.3-0.4 to 5.6-5.8 dense MFLOPs per example on the first training batch (14-20x).
LADDERS = {
    "interformer": ladder(
        "interformer",
        [
            (8, {"num_layers": 1, "num_heads": 2}),
            (16, {"num_layers": 1, "num_heads": 2}),
            (16, {"num_layers": 2, "num_heads": 2}),
            (32, {"num_layers": 2, "num_heads": 4}),
            (32, {"num_layers": 3, "num_heads": 4}),
        ],
    ),
    "kunlun": ladder(
        "kunlun",
        [
            (8, {"num_layers": 1, "num_heads": 2, "ffn_hidden": 32, "interaction_hidden": 64}),
            (16, {"num_layers": 1, "num_heads": 2, "ffn_hidden": 64, "interaction_hidden": 128}),
            (16, {"num_layers": 2, "num_heads": 2, "ffn_hidden": 64, "interaction_hidden": 128}),
            (32, {"num_layers": 2, "num_heads": 4, "ffn_hidden": 64, "interaction_hidden": 128}),
            (48, {"num_layers": 2, "num_heads": 4, "ffn_hidden": 128, "interaction_hidden": 256}),
        ],
        # The input LayerNorms take Kunlun off its init-dependent plateau on large logs (kunlun.py's
        # docstring says why); on InterFormer's inputs they did not help.
        input_norm=True,
        # The global interaction crosses the raw tokens too (kunlun.py's docstring says why).
        interaction_tokens="all",
    ),
}
QUICK_LADDERS = {
    "interformer": ladder(
        "interformer", [(4, {"num_layers": 1}), (8, {"num_layers": 1}), (8, {"num_layers": 2})]
    ),
    "kunlun": ladder(
        "kunlun",
        [(4, {"num_layers": 1}), (8, {"num_layers": 1}), (8, {"num_layers": 2})],
        input_norm=True,
        interaction_tokens="all",
    ),
}


def dense_flops_per_example(model: RankingModel, frames: SplitFrames) -> float:
    """Forward + backward FLOPs of one training batch, per example (embedding lookups not counted)."""
    batch = frames.train.take(torch.arange(min(BATCH_SIZE, frames.train.num_rows)))
    model.train()
    with FlopCounterMode(display=False) as counter:
        output = model(batch)
        loss = sum(
            torch.nn.functional.binary_cross_entropy_with_logits(v, batch.labels[k])
            for k, v in output.logits.items()
        )
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch.size


def masks(
    table: pa.Table, train_end: int, valid_end: int, train_rows: int, rows: int | None
) -> dict[str, np.ndarray]:
    """The chronological split, training on the last `train_rows` training events; with `rows`, only
    the first `rows` valid and test events."""
    ids = table.column("event_id").to_numpy()
    valid_stop = valid_end if rows is None else min(valid_end, train_end + rows)
    test_stop = int(ids.max()) + 1 if rows is None else valid_end + rows
    return {
        "train": (ids < train_end) & (ids >= train_end - train_rows),
        "valid": (ids >= train_end) & (ids < valid_stop),
        "test": (ids >= valid_end) & (ids < test_stop),
    }


def oracle_ne(log: EventLog, test_mask: np.ndarray) -> float:
    """NE of the simulator's true click probabilities on the test rows: the floor for any model."""
    table = log.read_all(["event_id", "click", "oracle_logit"])
    keep = test_mask(table)["test"]
    labels = table.column("click").to_numpy()[keep].astype(np.float64)
    logits = table.column("oracle_logit").to_numpy()[keep].astype(np.float64)
    return normalized_entropy(labels, 1 / (1 + np.exp(-logits)))


def fit_line(log_flops: np.ndarray, ne: np.ndarray) -> dict[str, float]:
    """Least squares NE = a - eta * ln(FLOPs), with the slope's standard error and r2."""
    slope, intercept = np.polyfit(log_flops, ne, 1)
    residual = ne - (intercept + slope * log_flops)
    total = ((ne - ne.mean()) ** 2).sum()
    dof = len(ne) - 2
    spread = ((log_flops - log_flops.mean()) ** 2).sum()
    stderr = float(np.sqrt((residual**2).sum() / dof / spread)) if dof > 0 and spread > 0 else float("nan")
    return {
        "eta": float(-slope),
        "eta_stderr": stderr,
        "a": float(intercept),
        "r2": float(1 - (residual**2).sum() / total) if total > 0 else 0.0,
    }


def bootstrap_eta(
    runs: list[dict[str, Any]], sizes: list[Size], rng: np.random.Generator, draws: int
) -> np.ndarray:
    """eta refitted on per-size mean NE after resampling each size's seeds with replacement."""
    per_size = [[r for r in runs if r["size"] == s.label] for s in sizes]
    log_flops = np.log([np.mean([r["dense_flops_per_example"] for r in rs]) for rs in per_size])
    ne = [np.array([r["test_ne"] for r in rs]) for rs in per_size]
    etas = np.empty(draws)
    for i in range(draws):
        means = np.array([v[rng.integers(0, len(v), len(v))].mean() for v in ne])
        etas[i] = -np.polyfit(log_flops, means, 1)[0]
    return etas


def train_one(size: Size, seed: int, log: EventLog, frames: SplitFrames, epochs: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    config = FMConfig(
        name=f"{size.family}-{size.label}",
        role="fm",
        tasks=["click"],
        embedding_dim=size.embedding_dim,
        interaction={"name": size.family, **size.interaction},
        heads=HEADS,
    )
    train = TrainConfig(batch_size=BATCH_SIZE, seed=seed, threads=THREADS)
    model = build_model(config, log.spec, embedding_lr=train.embedding_lr)
    flops = dense_flops_per_example(model, frames)
    trainer = Trainer(model, train, Path("/tmp/fxrec-scaling"), progress=False)
    started = time.perf_counter()
    result = fit_holdout(trainer, frames, max_epochs=epochs, patience=PATIENCE)
    seconds = time.perf_counter() - started
    examples = sum(e.train_examples for e in result.epochs[: result.best_epoch + 1])
    return {
        "family": size.family,
        "size": size.label,
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "dense_flops_per_example": flops,
        "training_flops": flops * examples,
        "test_ne": result.test["ne"],
        "test_auc": result.test["auc"],
        "valid_auc": [e.valid["auc"] for e in result.epochs],
        "best_epoch": result.best_epoch,
        "seconds": seconds,
        "examples_per_second": sum(e.train_examples for e in result.epochs) / seconds,
    }


def summarise(
    runs: list[dict[str, Any]], ladders: dict[str, list[Size]], draws: int
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Per-size mean +- sd, per-family fits, and the eta ratio with its bootstrap interval."""
    table = []
    for family, sizes in ladders.items():
        for size in sizes:
            mine = [r for r in runs if r["size"] == size.label and r["family"] == family]
            if not mine:
                continue
            ne, auc = np.array([r["test_ne"] for r in mine]), np.array([r["test_auc"] for r in mine])
            table.append(
                {
                    "family": family,
                    "size": size.label,
                    "params": mine[0]["params"],
                    "mflops_per_example": mine[0]["dense_flops_per_example"] / 1e6,
                    "seeds": len(mine),
                    "ne_mean": float(ne.mean()),
                    "ne_sd": float(ne.std(ddof=1)) if len(ne) > 1 else float("nan"),
                    "auc_mean": float(auc.mean()),
                    "auc_sd": float(auc.std(ddof=1)) if len(auc) > 1 else float("nan"),
                    "seconds_mean": float(np.mean([r["seconds"] for r in mine])),
                }
            )
    rng = np.random.default_rng(0)
    fits: dict[str, Any] = {}
    boot: dict[str, np.ndarray] = {}
    for family, sizes in ladders.items():
        mine = [r for r in runs if r["family"] == family]
        done = [s for s in sizes if any(r["size"] == s.label for r in mine)]
        if len(done) < 2:
            continue
        log_flops = np.log([r["dense_flops_per_example"] for r in mine])
        fit = fit_line(log_flops, np.array([r["test_ne"] for r in mine]))
        means = [row for row in table if row["family"] == family]
        on_means = fit_line(
            np.log([row["mflops_per_example"] for row in means]), np.array([row["ne_mean"] for row in means])
        )
        boot[family] = bootstrap_eta(mine, done, rng, draws)
        fits[family] = {
            **fit,
            "r2_on_size_means": on_means["r2"],
            "eta_bootstrap_sd": float(boot[family].std(ddof=1)),
            "eta_bootstrap_95": [float(np.percentile(boot[family], q)) for q in (2.5, 97.5)],
            "flops_span": float(np.exp(log_flops.max() - log_flops.min())),
            "runs": len(mine),
        }
    ratio: dict[str, Any] = {}
    if {"interformer", "kunlun"} <= fits.keys():
        k, i = fits["kunlun"], fits["interformer"]
        draws_ratio = boot["kunlun"] / boot["interformer"]
        ratio = {
            "eta_kunlun_over_interformer": k["eta"] / i["eta"] if i["eta"] else float("nan"),
            # First-order error propagation from the two slopes' standard errors.
            "ratio_stderr_delta": abs(k["eta"] / i["eta"])
            * float(np.hypot(k["eta_stderr"] / k["eta"], i["eta_stderr"] / i["eta"]))
            if i["eta"] and k["eta"]
            else float("nan"),
            "ratio_bootstrap_95": [float(np.percentile(draws_ratio, q)) for q in (2.5, 97.5)],
            "bootstrap_p_ratio_at_least_1_5": float(np.mean(draws_ratio >= 1.5)),
            "bootstrap_p_interformer_eta_positive": float(np.mean(boot["interformer"] > 0)),
        }
    return table, fits, ratio


def plot(
    table: list[dict[str, Any]], fits: dict[str, Any], runs: list[dict[str, Any]], oracle: float, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for family, color in zip(FAMILIES, ("tab:blue", "tab:orange"), strict=True):
        rows = [r for r in table if r["family"] == family]
        if not rows or family not in fits:
            continue
        mine = [r for r in runs if r["family"] == family]
        axis.scatter(
            [r["dense_flops_per_example"] for r in mine],
            [r["test_ne"] for r in mine],
            color=color,
            alpha=0.3,
            s=12,
        )
        flops = np.array([r["mflops_per_example"] * 1e6 for r in rows])
        axis.errorbar(
            flops,
            [r["ne_mean"] for r in rows],
            yerr=[r["ne_sd"] for r in rows],
            fmt="o",
            color=color,
            capsize=3,
        )
        line = np.geomspace(flops.min(), flops.max(), 50)
        fit = fits[family]
        axis.plot(
            line,
            fit["a"] - fit["eta"] * np.log(line),
            color=color,
            label=f"{family}: eta = {fit['eta']:.4f} +- {fit['eta_stderr']:.4f} (r2 {fit['r2']:.2f})",
        )
    axis.set_xscale("log")
    axis.set_xlabel("dense training FLOPs per example (forward + backward, matmuls only)")
    axis.set_ylabel("test NE (lower is better)")
    axis.set_title(f"NE vs compute on the simulated log (oracle NE {oracle:.3f})")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def report(
    args: Any,
    runs: list[dict[str, Any]],
    ladders: dict[str, list[Size]],
    oracle: float,
    settings: dict[str, Any],
    draws: int,
) -> None:
    """Print the per-size table, the fits and the eta ratio; write the JSON and the plot."""
    table, fits, ratio = summarise(runs, ladders, draws)
    print_table("test NE and AUC per size (mean +- sd over seeds; simulated log, holdout split)", table)
    print_table(
        "fit NE = a - eta * ln(dense FLOPs per example)", [{"family": f, **v} for f, v in fits.items()]
    )
    if ratio:
        print(
            f"oracle test NE {oracle:.4f}; eta(kunlun) / eta(interformer) = "
            f"{ratio['eta_kunlun_over_interformer']:.3g} (bootstrap 95% {ratio['ratio_bootstrap_95'][0]:.3g}"
            f"..{ratio['ratio_bootstrap_95'][1]:.3g}; goal >= 1.5, the paper reports ~2)"
        )
    write_result(args, "scaling", table, ratio, fits=fits, oracle_test_ne=oracle, runs=runs, settings=settings,
                 complete=True)  # fmt: skip
    if fits and not args.quick:  # a part run of one family or one size has no line to draw
        plot(table, fits, runs, oracle, args.out.with_suffix(".png"))


def combine(args: Any) -> None:
    """One report from the runs of several result files (e.g. families or seeds run in parallel
    processes); a (family, size, seed) run found in two files is taken from the later one."""
    results = [json.loads(Path(f).read_text()) for f in args.combine.split(",")]
    if len({r["oracle_test_ne"] for r in results}) != 1:
        raise SystemExit("--combine: the files come from different logs or splits (their oracle NEs differ)")
    if len({r["settings"].get("max_epochs", MAX_EPOCHS) for r in results}) != 1:
        raise SystemExit("--combine: the files trained different numbers of epochs")
    if len({r["settings"].get("history_length", 20) for r in results}) != 1:
        raise SystemExit("--combine: the files read histories of different lengths")
    runs = list({(r["family"], r["size"], r["seed"]): r for res in results for r in res["runs"]}.values())
    ladders = {
        f: [Size(**s) for res in results for s in res["settings"]["ladders"].get(f, [])] for f in FAMILIES
    }
    ladders = {f: list({s.label: s for s in sizes}.values()) for f, sizes in ladders.items()}
    settings = {**results[0]["settings"], "ladders": {f: [asdict(s) for s in v] for f, v in ladders.items()}}
    settings["combined_from"] = args.combine.split(",")
    settings["seeds"] = {f: sorted({r["seed"] for r in runs if r["family"] == f}) for f in FAMILIES}
    report(args, runs, ladders, results[0]["oracle_test_ne"], settings, 2000)


def main() -> None:
    args = parse_args(
        "scaling",
        __doc__.splitlines()[0],
        [
            (("--seeds",), {"type": int, "default": None}),
            (
                ("--first-seed",),
                {"type": int, "default": 0, "help": "seeds run first-seed .. first-seed+seeds-1"},
            ),
            (
                ("--data-scale",),
                {"type": int, "default": 1, "help": "K times the impressions and training rows"},
            ),
            (
                ("--rungs",),
                {"default": None, "help": "comma-separated 0-based rungs of each ladder to train"},
            ),
            (("--epochs",), {"type": int, "default": MAX_EPOCHS, "help": "training epochs per run"}),
            (
                ("--history-length",),
                {
                    "type": int,
                    "default": None,
                    "help": "L, the clicks in each history (default: the log's 20)",
                },
            ),
            (("--world",), {"default": "default", "choices": sorted(WORLDS), "help": "simulator variant"}),
            (("--families",), {"default": ",".join(FAMILIES), "help": "comma-separated families to train"}),
            (
                ("--combine",),
                {
                    "default": None,
                    "help": "comma-separated result files: report their runs together, train nothing",
                },
            ),
        ],
    )
    if args.combine:
        combine(args)
        return
    torch.set_num_threads(THREADS)
    simulator = SIMULATOR.model_copy(
        update={"impressions_per_day": SIMULATOR.impressions_per_day * args.data_scale, **WORLDS[args.world]}
    )
    log = EventLog(simulated_log(simulator, "scaling"))
    if args.history_length is not None:  # histories are computed when the splits are read, not stored
        log.spec = log.spec.model_copy(update={"history_length": args.history_length})
    train_end, valid_end = split_points(log.read_all(["event_id"]).column("event_id").to_numpy())
    # --quick: small slices of each split; histories still come from the whole log.
    train_rows = 3_000 if args.quick else TRAIN_ROWS * args.data_scale
    eval_rows = 1_500 if args.quick else EVAL_ROWS * min(args.data_scale, 2)
    assign = partial(masks, train_end=train_end, valid_end=valid_end, train_rows=train_rows, rows=eval_rows)
    frames = split_by_mask(log, list(log.spec.features), assign)
    oracle = oracle_ne(log, assign)
    ladders = QUICK_LADDERS if args.quick else LADDERS
    families = args.families.split(",")
    if unknown := set(families) - set(FAMILIES):
        raise SystemExit(f"--families: unknown {sorted(unknown)}; known: {list(FAMILIES)}")
    ladders = {family: ladders[family] for family in families}
    if args.rungs:
        keep = [int(i) for i in args.rungs.split(",")]
        ladders = {family: [sizes[i] for i in keep] for family, sizes in ladders.items()}
    seeds = args.seeds or (2 if args.quick else SEEDS)
    draws = 200 if args.quick else 2000
    settings = {
        "ladders": {f: [asdict(s) for s in sizes] for f, sizes in ladders.items()},
        "seeds": list(range(args.first_seed, args.first_seed + seeds)),
        "max_epochs": args.epochs,
        "patience": PATIENCE,
        "train_rows": train_rows,
        "valid_rows": frames.valid.num_rows,
        "test_rows": frames.test.num_rows,
        "batch_size": BATCH_SIZE,
        "threads": THREADS,
        "heads": HEADS,
        "optimizers": "TrainConfig defaults: Adam on dense parameters, row-wise AdaGrad on embeddings",
        "data_scale": args.data_scale,
        "world": args.world,
        "history_length": log.spec.history_length,
        "simulator": simulator.model_dump(),
        "flops": "torch.utils.flop_counter.FlopCounterMode, forward+backward of one batch / batch size; "
        "dense matmul FLOPs only, fxrec's jagged attention / GDPA kernels included over real lengths and "
        "allowed pairs (fxrec.ops.flops); embedding lookups, element-wise ops and norms not counted",
        "fit": "NE = a - eta * ln(dense FLOPs per example), least squares over every (size, seed) run; "
        "bootstrap: seeds resampled within each size, refit on per-size means",
    }
    print(
        f"oracle test NE {oracle:.4f}; train {frames.train.num_rows} rows, test {frames.test.num_rows}",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    # Seeds outermost, then rungs with the families in turn: a run cut short still has both
    # families' ladders up to the same rung.
    for seed in range(args.first_seed, args.first_seed + seeds):
        for rung in zip(*ladders.values(), strict=True):
            for size in rung:
                runs.append(train_one(size, seed, log, frames, args.epochs))
                shown = {k: v for k, v in runs[-1].items() if k != "valid_auc"}
                print(shown, flush=True)
                table, fits, ratio = summarise(runs, ladders, draws)
                write_result(args, "scaling", table, ratio, fits=fits, oracle_test_ne=oracle, runs=runs,
                             settings=settings, complete=False)  # fmt: skip
    report(args, runs, ladders, oracle, settings, draws)


if __name__ == "__main__":
    main()
