"""Dense-to-sparse pruning over the stream: NE per day, bytes and inference speed of pruned VMs.

One VM (the feed surface, the spec's VM features, DCNv2 + MLP heads) trains progressively on the
simulator's drifting world (interests drift fast, new users keep arriving: the sparsity pattern that
fits day 1 need not fit day 8) seven times, same log, same seed, same initial weights:

- dense;
- one-shot: dense for `start_day` days, then pruned once by magnitude, mask fixed (`schedule: oneshot`);
- D2S: the dense weights keep training (straight-through), the mask is refreshed every day from them and
  its sparsity ramps up over `ramp_days` days (`schedule: d2s`, fxrec.lowp.pruning);

each pruned at 50%, 80% and 90% of every dense Linear's weights but the logit layers (per layer:
`scope: layer`). NE per evaluation day (the trainer's progressive predictions: day t predicted by the
model trained through day t-1) for each task; the summary NE is the mean over the days evaluated after
the first prune, and its change relative to dense in percent.

Bytes, per pruned VM: its pruned Linears' weights as dense fp32 (4 bytes each) against two sparse
storages, CSR (fp32 values + int32 column indices + int32 row pointers) and bitmask (one bit per
weight + fp32 values of the kept ones); and the whole model (embedding tables included) with those
layers stored either way. Torch's own CSR tensors use int64 indices (12 bytes per kept weight).

Inference examples/s over the last day's feed events in batches of 4096, one thread, in interleaved
rounds (every variant once per round, the order the same each round) so that a stall on the shared
machine shows as spread: the dense VM, each pruned VM run with dense kernels on the zero-filled
weights (what a served state_dict does), and each pruned VM with its pruned Linears as
`torch.sparse` CSR matmuls (`addmm(bias, W_csr, x^T)^T`). The whole model's rate is mostly embedding
lookups and the interaction; the pruned Linears alone (their real inputs from one batch, dense
`F.linear` against the CSR matmul) are timed the same way, to show what the sparse kernel does for
the part pruning touches. Ratios are per round, reported as median (min, max) over rounds.

    python bench/pruning.py [--quick] [--out FILE]

A plot of NE per day (click) is written next to the JSON (`<out>.png`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import pyarrow.parquet as pq
import torch
from _common import parse_args, print_table, simulated_log, write_result
from torch import nn

from fxrec.config import ModelConfig, TrainConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.reader import iter_frames
from fxrec.data.simulator import SimulatorConfig
from fxrec.factory import build_model
from fxrec.lowp.pruning import Pruner
from fxrec.metrics.ranking import ne as normalized_entropy
from fxrec.metrics.ranking import relative_ne_change
from fxrec.models.ranking import RankingModel
from fxrec.run import ModelDir
from fxrec.train.trainer import Trainer

# bench/scaling.py's log with its --world drifting, more days and events.
SIMULATOR = SimulatorConfig(
    seed=23,
    days=12,
    impressions_per_day=60_000,
    users=3_000,
    new_users_per_day=600,
    ads=600,
    new_ads_per_day=40,
    advertisers=120,
    interest_drift=0.2,
)
QUICK = {"days": 6, "impressions_per_day": 30_000, "users": 2_000, "new_users_per_day": 400}
VM = {
    "name": "vm_feed",
    "role": "vm",
    "surfaces": ["feed"],
    "embedding_dim": 16,
    "dense_layers": [64],
    "interaction": {"name": "dcnv2", "num_layers": 2, "low_rank": 32},
    "heads": {"kind": "shared_bottom", "hidden": [128, 64]},
}
SPARSITIES = (0.5, 0.8, 0.9)
START_DAY = 1
BATCH_SIZE = 1024
INFERENCE_BATCH = 4096
THREADS = 1  # 2 shared cores: one thread keeps the timings comparable


def variants(ramp_days: int) -> list[tuple[str, dict[str, Any] | None]]:
    out: list[tuple[str, dict[str, Any] | None]] = [("dense", None)]
    for schedule in ("oneshot", "d2s"):
        for sparsity in SPARSITIES:
            prune = {
                "sparsity": sparsity,
                "schedule": schedule,
                "start_day": START_DAY,
                "ramp_days": ramp_days,
            }
            out.append((f"{schedule}@{sparsity:.0%}", {**prune, "refresh_days": 1, "scope": "layer"}))
    return out


def train(log: EventLog, prune: dict[str, Any] | None, workdir: Path) -> tuple[RankingModel, dict[str, Any]]:
    config = ModelConfig.model_validate({**VM, "prune": prune})
    torch.manual_seed(0)
    model = build_model(config, log.spec)
    trainer = Trainer(
        model, TrainConfig(batch_size=BATCH_SIZE, threads=THREADS, snapshots="none"), workdir, progress=False
    )
    started = time.perf_counter()
    trainer.fit(log, surfaces=VM["surfaces"])
    seconds = time.perf_counter() - started
    ne_per_day: dict[str, list[float]] = {t: [] for t in model.tasks}
    for day in log.days[1:]:
        table = pq.read_table(ModelDir(workdir).prediction(day))
        for task in model.tasks:
            ne_per_day[task].append(
                normalized_entropy(table[f"label_{task}"].to_numpy(), table[f"pred_{task}"].to_numpy())
            )
    pruner = Pruner.of(model)
    return model, {
        "train_seconds": seconds,
        "ne_per_day": ne_per_day,
        "sparsity": pruner.sparsity() if pruner else 0.0,
        "layer_sparsity": pruner.layer_sparsity() if pruner else {},
    }


# -- bytes -----------------------------------------------------------------------------------
def storage(model: RankingModel, pruner: Pruner | None) -> dict[str, int]:
    """Bytes of the pruned Linears' weights (dense fp32, CSR, bitmask) and of the whole model."""
    layers = list(pruner.layers.values()) if pruner else []
    weights = [layer.weight.detach() for layer in layers]
    total = sum(w.numel() for w in weights)
    nnz = sum(int((w != 0).sum()) for w in weights)
    rows = sum(w.shape[0] + 1 for w in weights)
    dense = 4 * total
    csr = 8 * nnz + 4 * rows
    bitmask = (total + 7) // 8 + 4 * nnz
    model_fp32 = sum(
        v.numel() * 4
        for k, v in model.state_dict().items()
        if v.is_floating_point() and not k.endswith(".original")
    ) + (4 * total if pruner else 0)  # the pruned weights counted once, as served
    return {
        "pruned_weights": total,
        "kept_weights": nnz,
        "pruned_layers_dense_bytes": dense,
        "pruned_layers_csr_bytes": csr,
        "pruned_layers_bitmask_bytes": bitmask,
        "model_dense_bytes": model_fp32,
        "model_csr_bytes": model_fp32 - dense + csr,
        "model_bitmask_bytes": model_fp32 - dense + bitmask,
    }


# -- inference -------------------------------------------------------------------------------
class CsrLinear(nn.Module):
    """A pruned Linear as a torch.sparse CSR matmul: y = (W_csr @ x^T + b)^T."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight.detach().to_sparse_csr()
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features)
        self.bias = bias.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.addmm(self.bias, self.weight, flat.t()).t()
        return out.reshape(*x.shape[:-1], out.shape[-1])


def served(model: RankingModel) -> RankingModel:
    """The model as served: masks folded into plain weights (zeros where pruned), dense kernels."""
    return Pruner.fold(model).eval()


class Swapped:
    """Within `with Swapped(model, {path: module})`, those submodules of `model` are replaced."""

    def __init__(self, model: nn.Module, replacements: dict[str, nn.Module]):
        self.model = model
        self.replacements = replacements
        self.originals: dict[str, nn.Module] = {}

    def _set(self, path: str, module: nn.Module) -> nn.Module:
        *parents, name = path.split(".")
        owner = self.model.get_submodule(".".join(parents)) if parents else self.model
        old = owner._modules[name]
        owner._modules[name] = module
        return old

    def __enter__(self) -> nn.Module:
        self.originals = {p: self._set(p, m) for p, m in self.replacements.items()}
        return self.model

    def __exit__(self, *exc: object) -> None:
        for path, module in self.originals.items():
            self._set(path, module)


def examples_per_second(model: nn.Module, batches: list) -> float:
    with torch.no_grad():
        started = time.perf_counter()
        count = 0
        for batch in batches:
            model(batch)
            count += batch.size
        return count / (time.perf_counter() - started)


def linear_inputs(model: RankingModel, paths: list[str], batch) -> dict[str, torch.Tensor]:
    """The input of each of `paths`' Linears on `batch`."""
    inputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[p].register_forward_hook(lambda m, args, out, p=p: inputs.__setitem__(p, args[0].detach()))
        for p in paths
    ]
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    return inputs


def layers_seconds(layers: list[nn.Module], inputs: list[torch.Tensor], repeat: int = 20) -> float:
    with torch.no_grad():
        started = time.perf_counter()
        for _ in range(repeat):
            for layer, x in zip(layers, inputs, strict=True):
                layer(x)
        return (time.perf_counter() - started) / repeat


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "per_round": values}


# -- plot ------------------------------------------------------------------------------------
def plot(days: list[str], runs: dict[str, dict[str, Any]], task: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    styles = {"dense": "-", "oneshot": "--", "d2s": ":"}
    for name, run in runs.items():
        style = styles[name.split("@")[0]]
        axis.plot(days, run["ne_per_day"][task], style, marker="o", markersize=3, label=name)
    axis.axvline(
        START_DAY, color="grey", linewidth=0.5
    )  # the first day predicted by a pruned model is the next
    axis.set_xlabel("evaluation day")
    axis.set_ylabel(f"NE ({task})")
    axis.set_title("NE per day: dense, one-shot and D2S pruning (drifting world)")
    axis.legend(fontsize=7, ncol=2)
    axis.tick_params(axis="x", labelrotation=45, labelsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main() -> None:
    args = parse_args("pruning", __doc__.splitlines()[0])
    torch.set_num_threads(THREADS)
    simulator = SIMULATOR.model_copy(update=QUICK if args.quick else {})
    ramp_days = 2 if args.quick else 3
    rounds = 5 if args.quick else 10
    log = EventLog(simulated_log(simulator, "pruning-quick" if args.quick else "pruning"))

    runs: dict[str, dict[str, Any]] = {}
    models: dict[str, RankingModel] = {}
    with tempfile.TemporaryDirectory(prefix="fxrec-pruning-") as tmp:
        for name, prune in variants(ramp_days):
            models[name], runs[name] = train(log, prune, Path(tmp) / name.replace("@", "-").replace("%", ""))
            print(
                f"{name}: trained in {runs[name]['train_seconds']:.1f}s, sparsity {runs[name]['sparsity']:.3f}"
            )

    days = log.days[1:]
    # Summary NE: the days predicted by a model pruned the day before or earlier (the first prune is
    # before training day START_DAY, so the first pruned prediction is day START_DAY + 1).
    pruned_days = slice(START_DAY, None)
    tasks = list(next(iter(runs.values()))["ne_per_day"])
    for name, run in runs.items():
        run["storage"] = storage(models[name], Pruner.of(models[name]))
        run["paths"] = list(Pruner.of(models[name]).layers) if Pruner.of(models[name]) else []
        served(models[name])
        for task in tasks:
            mean = float(np.mean(run["ne_per_day"][task][pruned_days]))
            run[f"ne_{task}"] = mean
            dense_mean = float(np.mean(runs["dense"]["ne_per_day"][task][pruned_days]))
            run[f"ne_{task}_change_pct"] = relative_ne_change(mean, dense_mean)

    # Inference: the last day's feed events.
    features = [log.spec.feature(n) for n in models["dense"].features]
    _, frame = list(iter_frames(log, features, days=[log.days[-1]], surfaces=VM["surfaces"]))[0]
    batches = list(frame.batches(INFERENCE_BATCH))
    paths = runs["oneshot@50%"]["paths"]
    # name -> (model, the submodules swapped in while it is timed)
    timed_models: dict[str, tuple[nn.Module, dict[str, nn.Module]]] = {"dense": (models["dense"], {})}
    layer_sets: dict[str, list[nn.Module]] = {}
    modules = {name: dict(model.named_modules()) for name, model in models.items()}
    inputs = linear_inputs(models["dense"], paths, batches[0])
    layer_sets["dense"] = [modules["dense"][p] for p in paths]
    for name in runs:
        if name == "dense":
            continue
        timed_models[f"{name} dense kernel"] = (models[name], {})
        timed_models[f"{name} csr"] = (models[name], {p: CsrLinear(modules[name][p]) for p in paths})
        layer_sets[f"{name} dense kernel"] = [modules[name][p] for p in paths]
        layer_sets[f"{name} csr"] = [CsrLinear(modules[name][p]) for p in paths]
    for name, (model, swap) in timed_models.items():  # the same scores: CSR changes the kernel only
        with torch.no_grad():
            expected = model(batches[0]).logits
            with Swapped(model, swap):
                got = model(batches[0]).logits
                examples_per_second(model, batches[:1])  # warm-up
        assert all(torch.allclose(got[t], expected[t], atol=1e-4) for t in got), name
    rates: dict[str, list[float]] = {name: [] for name in timed_models}
    layer_times: dict[str, list[float]] = {name: [] for name in layer_sets}
    x = [inputs[p] for p in paths]
    for _ in range(rounds):
        for name, (model, swap) in timed_models.items():
            with Swapped(model, swap):
                rates[name].append(examples_per_second(model, batches))
        for name, layers in layer_sets.items():
            layer_times[name].append(layers_seconds(layers, x))

    rows, speed_rows = [], []
    for name, run in runs.items():
        row: dict[str, Any] = {"model": name, "sparsity": round(run["sparsity"], 3)}
        for task in tasks:
            row[f"NE {task}"] = run[f"ne_{task}"]
            row[f"ΔNE {task} %"] = run[f"ne_{task}_change_pct"]
        s = run["storage"]
        row["linears KB fp32"] = s["pruned_layers_dense_bytes"] / 1024
        row["CSR KB"] = s["pruned_layers_csr_bytes"] / 1024
        row["bitmask KB"] = s["pruned_layers_bitmask_bytes"] / 1024
        row["model KB fp32"] = s["model_dense_bytes"] / 1024
        row["CSR"] = s["model_csr_bytes"] / 1024
        row["bitmask"] = s["model_bitmask_bytes"] / 1024
        speed: dict[str, Any] = {"model": name}
        for kernel in ("dense kernel", "csr"):
            key = "dense" if name == "dense" else f"{name} {kernel}"
            if name == "dense" and kernel == "csr":
                continue
            per_round = [r / d for r, d in zip(rates[key], rates["dense"], strict=True)]
            layer_ratio = [d / t for t, d in zip(layer_times[key], layer_times["dense"], strict=True)]
            run[f"inference_{kernel.replace(' ', '_')}"] = {
                "examples_per_s": spread(rates[key]),
                "speedup_vs_dense": spread(per_round),
                "pruned_linears_seconds_per_batch": spread(layer_times[key]),
                "pruned_linears_speedup_vs_dense": spread(layer_ratio),
            }
            label = "dense" if kernel == "dense kernel" else "csr"
            speed[f"ex/s {label}"] = statistics.median(rates[key])
            speed[f"× {label} (min-max)"] = _ratio(per_round)
            speed[f"linears × {label} (min-max)"] = _ratio(layer_ratio)
        rows.append({**row, **{k: v for k, v in speed.items() if k != "model"}})
        speed_rows.append(speed)
    print_table(
        f"pruning: {VM['name']} on the drifting world, {len(days)} evaluation days (NE, bytes)",
        [{k: v for k, v in row.items() if not k.startswith(("ex/s", "×", "linears ×"))} for row in rows],
    )
    print_table(
        f"inference, batches of {INFERENCE_BATCH}, {rounds} interleaved rounds, × vs dense", speed_rows
    )
    ne_rows = [
        {"model": n, **{d[5:]: v for d, v in zip(days, r["ne_per_day"]["click"], strict=True)}}
        for n, r in runs.items()
    ]
    print_table("NE (click) per evaluation day", ne_rows)

    png = args.out.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(days, runs, "click", png)
    print(f"wrote {png}")
    ratios = {
        name: {
            "ne_click_change_pct": run["ne_click_change_pct"],
            "model_bytes_csr_over_dense": run["storage"]["model_csr_bytes"]
            / run["storage"]["model_dense_bytes"],
            "pruned_linears_csr_over_dense_bytes": run["storage"]["pruned_layers_csr_bytes"]
            / max(1, run["storage"]["pruned_layers_dense_bytes"]),
            "inference_csr_speedup": run.get("inference_csr", {}).get("speedup_vs_dense", {}).get("median"),
            "pruned_linears_csr_speedup": run.get("inference_csr", {})
            .get("pruned_linears_speedup_vs_dense", {})
            .get("median"),
        }
        for name, run in runs.items()
        if name != "dense"
    }
    for run in runs.values():
        run.pop("paths")
    write_result(
        args,
        "pruning",
        rows,
        ratios,
        simulator=simulator.model_dump(),
        vm=VM,
        schedule={"start_day": START_DAY, "ramp_days": ramp_days, "refresh_days": 1, "scope": "layer"},
        days=days,
        rounds=rounds,
        runs=runs,
        plot=str(png),
    )


if __name__ == "__main__":
    main()
