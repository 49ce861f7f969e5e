"""Low precision on the demo's VMs and FM: what each way of running them in fewer bits buys on this CPU,
and what it costs in NE.

Setup: the demo's world and models (configs/demo.yaml: the simulator, the FM, one VM per surface, no
transfer channels), trained once into .cache/lowp/ by fxrec's own jobs (`--quick`: 4 days of 20,000
impressions). Every VM and the FM trained through the second-last day; the last day is held out.

VM inference, per VM, side by side:

- `fp32`: the trained VM;
- `all_bf16`: every Linear in bf16 (LowpLinear, frozen: bf16 weights), every table in fp16 rows (TorchRec
  has no bf16 rows);
- `all_int8`: every Linear dynamic int8 row-wise (`torch._int_mm`), every table int8 row-wise;
- `dispatch`: LoKA's plan for the VM (fxrec.lowp.dispatch.plan_from_probe on `fxrec probe` of the VM:
  per Linear the fastest format under the error threshold and >= 1.05x faster here), tables fp32;
- `budget`: `fxrec quantize`'s plan, the cheapest within 0.02% relative NE on the second-last day
  (fxrec.lowp.budget).

For each: the relative NE change per task on the held-out day's events of the VM's surface (against
fp32, same events), the model's bytes (`fxrec.lowp.quantize.model_bytes`: every parameter and buffer
storage once), and examples/s scoring those events in batches of `BATCH` (the batches built once, one
thread), in interleaved rounds: every variant once per round, in an order rotated each round; the ratio
to fp32 is taken per round and reported as median (min, max).

FM training, side by side: `fp32`, `all_bf16` (`dispatch: bf16`: every Linear but the logit layers in
bf16 forward, fp32 backward), `dispatch` (`dispatch: auto`: the probe on the first training day picks
each Linear's format for the rest). NE: each trains over the log as `fxrec train fm` does (the fp32 FM
is the run's), scored on its progressive predictions of the last `train.report_days` days pooled (each
day predicted by the model trained through the day before, as `fxrec eval` reports); relative change
against fp32, beside the change
that training fp32 again with another seed makes (`fp32_other_seed`: the noise floor any variant's change
must clear before it means anything). Examples/s:
interleaved rounds of `STEPS` training steps of each variant from the same initial weights on the same
batches (the dispatch variant with the plan its own training ended with).

LoKA's mods, one at a time on the FM (`mods: {bias: false}`, `{block_norm: 256}`, `{activation: hardswish}`):
how many modules each changes in the demo FM and the held-out NE change of training with it, against fp32
(beside the reseeded noise floor).

Goals (issue 25): a quantized VM >= 2x fp32 inference throughput at <= 1/3 of its bytes within 0.02%
relative NE; FM training >= 1.3x fp32 within 0.02%. The JSON says what was reached.

    python bench/lowp.py [--quick] [--out FILE]
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path

import _common
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from _common import ROOT, parse_args, print_table, write_result

from fxrec.config import TrainConfig
from fxrec.data.reader import iter_frames
from fxrec.factory import build_model
from fxrec.jobs import load_run_config
from fxrec.jobs.probe import probe_model
from fxrec.jobs.quantize import EvalDays, frame_ne, quantize_model
from fxrec.jobs.train import prepare_events, train_model
from fxrec.lowp.budget import DEFAULT_BUDGET, relative_changes
from fxrec.lowp.dispatch import apply_plan, current_plan, plan_from_probe
from fxrec.lowp.mods import Mods
from fxrec.lowp.quantize import QuantPlan, model_bytes, quantize
from fxrec.metrics.ranking import ne
from fxrec.run import Run
from fxrec.train.trainer import Trainer

NAME = "lowp"
BATCH = 512  # candidates scored per call: a ranking request's size
STEPS = 20  # training steps per variant per round
VM_VARIANTS = ("fp32", "all_bf16", "all_int8", "dispatch", "budget")
FM_VARIANTS = {"fp32": "none", "all_bf16": "bf16", "dispatch": "auto"}
MODS = {
    "no_bias": {"bias": False},
    "block_norm_256": {"block_norm": 256},
    "hardswish": {"activation": "hardswish"},
}


def _config(quick: bool):
    config = load_run_config(ROOT / "configs" / "demo.yaml")
    updates: dict = {"experiment": None, "name": "lowp"}
    if quick:
        simulator = config.simulator.model_copy(update={"days": 4, "impressions_per_day": 20_000})
        updates["simulator"] = simulator
    train = config.train.model_copy(update={"probe": False})
    updates["train"] = train
    return config.model_copy(update=updates)


def _with(model_config, **changes):
    """A copy of a model config with `changes`, validated (blocks given as dicts become typed blocks)."""
    return type(model_config).model_validate({**model_config.model_dump(mode="json"), **changes})


def _run_dir(config) -> Path:
    digest = hashlib.sha1(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:8]
    return ROOT / ".cache" / "lowp" / f"run-{digest}"


def _rounds(functions: dict[str, callable], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, interleaved: every function once per round, rotated."""
    names = list(functions)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _ratio(times: dict[str, list[float]], name: str, base: str = "fp32") -> dict[str, float]:
    """Speed-up of `name` over `base` per round (base time / name time): median, min, max."""
    ratios = [b / t for b, t in zip(times[base], times[name], strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def _score_all(model: torch.nn.Module, batches: list) -> None:
    with torch.no_grad():
        for batch in batches:
            model(batch)


def vm_rows(run: Path, vm: str, rounds: int, log) -> tuple[list[dict], dict]:
    run_dir = Run(run)
    loaded = run_dir.load_model(vm)
    model = loaded.model
    held_out_day = log.days[-1]
    frame = EvalDays(run_dir, loaded, log).frame(held_out_day)
    probed = probe_model(run, vm, log)
    dispatch_plan = plan_from_probe(probed.report)
    budget = quantize_model(run, vm, budget=DEFAULT_BUDGET, out=f"{vm}_lowp_bench", progress=False)
    plans = {
        "all_bf16": QuantPlan.for_model(model, table="fp16", linear="bf16"),
        "all_int8": QuantPlan.for_model(model, table="int8", linear="int8_rowwise"),
        "dispatch": QuantPlan({}, {path: f for path, f in dispatch_plan.items()}),
        "budget": budget.result.plan,
    }
    variants = {"fp32": model, **{name: quantize(model, plan) for name, plan in plans.items()}}
    reference = frame_ne(model, frame)
    batches = list(frame.batches(BATCH))
    torch.set_num_threads(1)
    for variant in variants.values():
        _score_all(variant, batches[:2])  # warm-up: kernels built, pages touched
    times = _rounds({name: (lambda m=m: _score_all(m, batches)) for name, m in variants.items()}, rounds)
    rows = []
    for name, variant in variants.items():
        changes = relative_changes(frame_ne(variant, frame), reference)
        speedup = _ratio(times, name)
        rows.append(
            {
                "vm": vm,
                "variant": name,
                "examples_per_s": frame.num_rows / statistics.median(times[name]),
                "speedup_median": speedup["median"],
                "speedup_min": speedup["min"],
                "speedup_max": speedup["max"],
                "bytes": model_bytes(variant),
                "bytes_ratio": model_bytes(variant) / model_bytes(model),
                "ne_change_click_pct": 100 * changes["click"],
                "ne_change_conversion_pct": 100 * changes["conversion"],
                "max_abs_ne_change_pct": 100 * max(abs(c) for c in changes.values()),
            }
        )
    plans_used = {name: plan.to_dict() for name, plan in plans.items()}
    return rows, {"events": frame.num_rows, "held_out_day": held_out_day, "plans": plans_used}


def _progressive_ne(model_dir, days: list[str]) -> dict[str, float]:
    """NE per task over the progressive predictions of `days` pooled (each day predicted by the model
    trained through the day before): what `fxrec eval` reports over `train.report_days`."""
    table = pa.concat_tables([pq.read_table(model_dir.prediction(day)) for day in days])
    tasks = [c.removeprefix("pred_") for c in table.column_names if c.startswith("pred_")]
    return {
        t: float(ne(table[f"label_{t}"].to_numpy(), table[f"pred_{t}"].to_numpy().astype(np.float64)))
        for t in tasks
    }


def fm_rows(config, run: Path, log, rounds: int) -> tuple[list[dict], dict]:
    run_dir = Run(run, config)
    days = log.days[-config.train.report_days :]
    models = {}
    for name, plan in FM_VARIANTS.items():
        fm = config.fm if plan == "none" else _with(config.fm, name=f"fm_{name}", dispatch={"plan": plan})
        torch.set_num_threads(config.train.threads)
        train_model(fm, config, run, log, quiet=True)
        models[name] = fm
    ne_by = {name: _progressive_ne(run_dir.model(fm.name), days) for name, fm in models.items()}
    # The noise floor: the fp32 FM trained again with another seed (another init and shuffle).
    reseeded = _with(config.fm, name="fm_fp32_seed1")
    train_model(
        reseeded,
        config.model_copy(update={"train": config.train.model_copy(update={"seed": config.train.seed + 1})}),
        run,
        log,
        quiet=True,
    )
    seed_change = relative_changes(_progressive_ne(run_dir.model(reseeded.name), days), ne_by["fp32"])
    # Throughput: the same initial weights, the same batches, each variant's final plan.
    features = [log.spec.feature(f) for f in build_model(config.fm, log.spec).features]
    _, frame = next(iter_frames(log, features, days=[log.days[-2]]))
    batches = [
        frame.take(torch.arange(i * config.train.batch_size, (i + 1) * config.train.batch_size))
        for i in range(STEPS)
    ]
    trainers = {}
    for name, fm in models.items():
        torch.manual_seed(config.train.seed)
        model = build_model(
            _with(fm, dispatch={"plan": "none"}), log.spec, embedding_lr=config.train.embedding_lr
        )
        apply_plan(model, current_plan(run_dir.load_model(fm.name).model))
        train = TrainConfig(**{**config.train.model_dump(), "snapshots": "none"})
        trainers[name] = Trainer(model, train, run_dir.root / "bench-trainers" / name, progress=False)
    torch.set_num_threads(config.train.threads)

    def steps(trainer: Trainer) -> None:
        for batch in batches:
            trainer.train_step(batch)

    for trainer in trainers.values():
        steps(trainer)  # warm-up
    times = _rounds({name: (lambda t=t: steps(t)) for name, t in trainers.items()}, rounds)
    rows = []
    for name in models:
        changes = relative_changes(ne_by[name], ne_by["fp32"])
        speedup = _ratio(times, name)
        rows.append(
            {
                "variant": name,
                "examples_per_s": STEPS * config.train.batch_size / statistics.median(times[name]),
                "speedup_median": speedup["median"],
                "speedup_min": speedup["min"],
                "speedup_max": speedup["max"],
                "ne_change_click_pct": 100 * changes["click"],
                "ne_change_conversion_pct": 100 * changes["conversion"],
                "max_abs_ne_change_pct": 100 * max(abs(c) for c in changes.values()),
            }
        )
    plans = {name: current_plan(run_dir.load_model(fm.name).model) for name, fm in models.items()}
    noise = {f"ne_change_{t}_pct": 100 * c for t, c in seed_change.items()}
    mods = mods_rows(config, run, log, ne_by["fp32"])
    meta = {
        "evaluation_days": days,
        "threads": config.train.threads,
        "plans": plans,
        "fp32_other_seed": noise,
    }
    return rows, {**meta, "mods": mods}


def mods_rows(config, run: Path, log, reference: dict[str, float]) -> list[dict]:
    """LoKA's mods, one at a time on the FM: the NE change of training with it, and what it changed."""
    run_dir = Run(run, config)
    rows = []
    for name, block in MODS.items():
        changed = Mods(**block).apply(build_model(config.fm, log.spec))
        fm = _with(config.fm, name=f"fm_mods_{name}", mods=block)
        torch.set_num_threads(config.train.threads)
        train_model(fm, config, run, log, quiet=True)
        changes = relative_changes(
            _progressive_ne(run_dir.model(fm.name), log.days[-config.train.report_days :]), reference
        )
        rows.append(
            {
                "mod": name,
                "block": block,
                "modules_changed": sum(len(v) for v in changed.values()),
                **{f"ne_change_{t}_pct": 100 * c for t, c in changes.items()},
            }
        )
    return rows


def main() -> None:
    args = parse_args(NAME, __doc__.splitlines()[0])
    config = _config(args.quick)
    run = _run_dir(config)
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.train.threads)
    log = prepare_events(config, run)
    train_model(config.fm, config, run, log, quiet=True)
    vms = config.expand_vms(log.spec.surfaces)
    for vm in vms:
        train_model(vm, config, run, log, quiet=True)
    rounds = 3 if args.quick else 7
    vm_table, vm_meta = [], {}
    for vm in vms:
        rows, meta = vm_rows(run, vm.name, rounds, log)
        vm_table += rows
        vm_meta[vm.name] = meta
    print_table("VM inference (speed-up = fp32 time / variant time per round)", vm_table)
    fm_table, fm_meta = fm_rows(config, run, log, rounds)
    print_table("FM training", fm_table)
    print(f"fp32 FM trained with another seed: NE change {fm_meta['fp32_other_seed']} (the noise floor)")
    print_table("LoKA mods on the FM, one at a time (NE change against fp32 without mods)", fm_meta["mods"])
    quantized = [r for r in vm_table if r["variant"] == "budget"]
    goals = {
        "vm_quantized_2x_at_third_bytes_within_budget": all(
            r["speedup_median"] >= 2
            and r["bytes_ratio"] <= 1 / 3
            and r["max_abs_ne_change_pct"] <= 100 * DEFAULT_BUDGET
            for r in quantized
        ),
        "fm_training_1_3x_within_budget": any(
            r["speedup_median"] >= 1.3 and r["max_abs_ne_change_pct"] <= 100 * DEFAULT_BUDGET
            for r in fm_table
            if r["variant"] != "fp32"
        ),
    }
    ratios = {
        "vm_speedup": {
            f"{r['vm']}/{r['variant']}": r["speedup_median"] for r in vm_table if r["variant"] != "fp32"
        },
        "vm_bytes_ratio": {
            f"{r['vm']}/{r['variant']}": r["bytes_ratio"] for r in vm_table if r["variant"] != "fp32"
        },
        "fm_training_speedup": {
            r["variant"]: r["speedup_median"] for r in fm_table if r["variant"] != "fp32"
        },
    }
    write_result(
        args,
        NAME,
        vm_table + [{"fm": True, **r} for r in fm_table],
        ratios,
        goals=goals,
        vm=vm_meta,
        fm=fm_meta,
        rounds=rounds,
        batch=BATCH,
        run=str(run.relative_to(ROOT)),
    )


if __name__ == "__main__":
    _common.machine()
    main()
