"""Scaling efficiency: NE against training compute for InterFormer and Kunlun, fitted NE = a - eta * ln(FLOPs).

Three or more sizes of each family (embedding dim x layers) train on the same chronological split of
a simulated ads log (holdout protocol: fxrec.train.holdout, best validation-AUC epoch), and the test
NE is fitted against the dense training FLOPs per example. FLOPs come from
`torch.utils.flop_counter.FlopCounterMode` over one forward + backward of a batch, divided by the
batch size: matmuls, attention and convolutions are counted; embedding lookups (TBE /
EmbeddingCollection), element-wise ops and norms are not, so these are *dense matmul* FLOPs.
Kunlun's paper reports an eta about 2x InterFormer's (research/arch.md §3).

    python bench/scaling.py [--quick] [--out FILE]
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import pyarrow as pa
import torch
from _common import ROOT, parse_args, print_table, write_result
from torch.utils.flop_counter import FlopCounterMode

from fxrec.config import ModelConfig, TrainConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.simulator import SimulatorConfig, simulate_to
from fxrec.data.sources.movielens import split_points
from fxrec.models.ranking import RankingModel, build_model
from fxrec.train.holdout import SplitFrames, fit_holdout, split_by_mask
from fxrec.train.trainer import Trainer

SIMULATOR = SimulatorConfig(
    seed=23,
    days=5,
    impressions_per_day=8_000,
    users=3_000,
    new_users_per_day=100,
    ads=600,
    new_ads_per_day=40,
    advertisers=120,
)
BATCH_SIZE = 1024
# (embedding dim, layers): the same ladder for both families.
SIZES = [(8, 1), (16, 2), (32, 2)]
QUICK_SIZES = [(4, 1), (8, 1), (8, 2)]
TRAIN_ROWS = 16_000  # the most recent training events; 2 shared cores bound the budget
FAMILIES = ("interformer", "kunlun")


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


def fit_eta(flops: list[float], ne: list[float]) -> dict[str, float]:
    """Least squares NE = a - eta * ln(FLOPs); r2 says how well a line fits."""
    x, y = np.log(np.asarray(flops)), np.asarray(ne)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = ((y - y.mean()) ** 2).sum()
    return {
        "eta": float(-slope),
        "a": float(intercept),
        "r2": float(1 - (residual**2).sum() / total) if total > 0 else 0.0,
    }


def main() -> None:
    args = parse_args("scaling", __doc__.splitlines()[0], [(("--seeds",), {"type": int, "default": 1})])
    torch.set_num_threads(2)
    path = ROOT / ".cache" / "data" / "simulated-scaling"
    if not path.exists():
        simulate_to(SIMULATOR, path, progress=False)
    log = EventLog(path)
    train_end, valid_end = split_points(log.read_all(["event_id"]).column("event_id").to_numpy())
    # --quick: small slices of each split; histories still come from the whole log.
    train_rows = 1_200 if args.quick else TRAIN_ROWS
    assign = partial(
        masks,
        train_end=train_end,
        valid_end=valid_end,
        train_rows=train_rows,
        rows=600 if args.quick else None,
    )
    frames = split_by_mask(log, list(log.spec.features), assign)
    epochs = 1  # one pass at a fixed data budget: NE differences come from model size alone
    rows: list[dict[str, Any]] = []
    for family in FAMILIES:
        for dim, layers in QUICK_SIZES if args.quick else SIZES:
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                config = ModelConfig(
                    name=f"{family}-{dim}x{layers}",
                    role="fm",
                    tasks=["click"],
                    embedding_dim=dim,
                    interaction={"name": family, "num_layers": layers},
                    heads={"hidden": [128, 64]},
                )
                model = build_model(config, log.spec)
                flops = dense_flops_per_example(model, frames)
                trainer = Trainer(
                    model,
                    TrainConfig(batch_size=BATCH_SIZE, seed=seed),
                    Path("/tmp/fxrec-scaling"),
                    progress=False,
                )
                started = time.perf_counter()
                result = fit_holdout(trainer, frames, max_epochs=epochs, patience=1)
                seconds = time.perf_counter() - started
                examples = sum(e.train_examples for e in result.epochs[: result.best_epoch + 1])
                rows.append(
                    {
                        "family": family,
                        "dim": dim,
                        "layers": layers,
                        "seed": seed,
                        "params": sum(p.numel() for p in model.parameters()),
                        "dense_flops_per_example": flops,
                        "training_flops": flops * examples,
                        "test_ne": result.test["ne"],
                        "test_auc": result.test["auc"],
                        "best_epoch": result.best_epoch,
                        "seconds": seconds,
                    }
                )
                print(rows[-1], flush=True)
    print_table("NE vs dense training FLOPs per example (simulated log, holdout split)", rows)
    fits = {}
    for family in FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        fits[family] = fit_eta([r["dense_flops_per_example"] for r in mine], [r["test_ne"] for r in mine])
    eta_ratio = (
        fits["kunlun"]["eta"] / fits["interformer"]["eta"] if fits["interformer"]["eta"] else float("nan")
    )
    print_table("fit NE = a - eta * ln(FLOPs per example)", [{"family": f, **v} for f, v in fits.items()])
    print(f"eta(kunlun) / eta(interformer) = {eta_ratio:.3g}  (goal >= 1.5; the paper reports ~2)")
    write_result(
        args,
        "scaling",
        rows,
        {"eta_kunlun_over_interformer": eta_ratio},
        fits=fits,
        settings={
            "sizes": QUICK_SIZES if args.quick else SIZES,
            "epochs": epochs,
            "train_rows": train_rows,
            "batch_size": BATCH_SIZE,
            "simulator": SIMULATOR.model_dump(),
            "flops": "torch.utils.flop_counter.FlopCounterMode, forward+backward of one batch / batch size; "
            "dense ops only (embedding lookups not counted)",
        },
    )


if __name__ == "__main__":
    main()
