"""Model FLOPs utilisation of FM training on this CPU, fp32 and bf16 autocast, against a measured peak.

Peak: a large square matmul in fp32 and in bf16 (bf16 runs on AMX tiles where the CPU has them); the
machine's peak is the faster of the two. Model FLOPs: `torch.utils.flop_counter.FlopCounterMode` over
one forward + backward (matmuls and attention, fxrec's own jagged attention / GDPA kernels included with
the formulas of `fxrec.ops.flops`: real lengths, allowed pairs, no recomputation; embedding lookups,
element-wise ops and norms are not counted). Result files written before those formulas counted
fxrec's kernels as 0, so their MFU is a little low for FMs with jagged histories. Two measurements
per precision:

- "dense part": forward + backward + Adam step of everything after the embedding lookup (dense arch,
  user tower, target attention, interaction, click head) on fixed embedding outputs, the click loss
  only: the part MFU is about;
- "full train_step": `Trainer.train_step` on real batches (embedding lookups, the fused TBE update,
  KJT handling included), the throughput a user sees.

For the dense part a profile splits the step's time into matmul kernels and everything else, and gives
the rate the matmul kernels themselves reach: what holds MFU back is then either small matmuls (a low
kernel rate) or time outside them (element-wise ops, norms, optimizer, framework overhead).

    python bench/mfu.py [--quick] [--out FILE]
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repo on sys.path)
import torch
from _common import ROOT, parse_args, print_table, write_result
from torch.utils.flop_counter import FlopCounterMode

from fxrec.config import FMConfig, ModelConfig, TrainConfig, load_config
from fxrec.data.eventlog import EventLog
from fxrec.data.reader import iter_frames
from fxrec.data.simulator import SimulatorConfig, simulate_to
from fxrec.factory import build_model
from fxrec.train.trainer import Trainer

# The demo FM as configs/demo.yaml defines it (user tower, target attention over the jagged history,
# DCNv2), and a wider DCNv2 FM: MFU on CPU is a question of matmul sizes.
FMS: dict[str, ModelConfig] = {
    "demo_fm": load_config(ROOT / "configs" / "demo.yaml").fm,
    "wide_fm": FMConfig(
        name="fm",
        role="fm",
        embedding_dim=64,
        interaction={
            "name": "dcnv2",
            "num_layers": 3,
            "low_rank": 512,
            "structure": "parallel",
            "deep_layers": [1024, 1024],
        },
        heads={"kind": "shared_bottom", "hidden": [1024, 512]},
    ),
}
# fxrec's own attention kernels count as matmul time: their FLOPs are counted (fxrec.ops.flops)
MATMUL_OPS = (
    "addmm", "mm", "bmm", "baddbmm", "matmul", "linear", "_scaled_dot_product", "mkldnn", "fxrec_native",
    "fxrec_triton",
)
SIMULATOR = SimulatorConfig(
    seed=5, days=2, impressions_per_day=20_000, users=5_000, ads=800, history_length=20
)


def peak_flops(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Best single-matmul rate over `repeats` (the best is the least disturbed by other load)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up (oneDNN picks its kernel)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def counted_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def matmul_time_share(step) -> float:
    """Fraction of one step's CPU time spent inside matmul / attention kernels (torch.profiler)."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        step()
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if any(op in e.key for op in MATMUL_OPS))
    return matmul / total if total else 0.0


def time_steps(step, steps: int, rounds: int = 3) -> float:
    """Seconds per step: the best of `rounds` rounds of `steps` steps (robust to a shared machine)."""
    step()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - started) / steps)
    return best


def measure(
    name: str, config: ModelConfig, log: EventLog, frame, batch_size: int, steps: int, bf16: bool
) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = build_model(config, log.spec)
    trainer = Trainer(model, TrainConfig(batch_size=batch_size), Path("/tmp/fxrec-mfu"), progress=False)
    batches = [frame.take(torch.randperm(frame.num_rows)[:batch_size]) for _ in range(4)]
    counter = iter(range(10**9))

    def full_step() -> None:
        with autocast(bf16):
            trainer.train_step(batches[next(counter) % len(batches)])

    # The dense part: everything after the embedding lookup, on fixed (detached) embedding outputs.
    batch = batches[0]
    with torch.no_grad():
        tokens, sequence = model._sparse_tokens(batch)
    if sequence is not None:
        sequence = dataclasses.replace(sequence, values=sequence.values.detach())
    model._sparse_tokens = lambda _batch: (tokens, sequence)  # type: ignore[method-assign]
    labels = batch.labels["click"]
    dense_params = [p for n, p in model.named_parameters() if not n.startswith("sparse_arch")]
    optimizer = torch.optim.Adam(dense_params, lr=1e-3)

    def dense_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(bf16):
            logits = model(batch).logits["click"]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        loss.backward()
        optimizer.step()

    rows = []
    for part, step in (("dense part", dense_step), ("full train_step", full_step)):
        if part == "full train_step":
            del model._sparse_tokens  # back to the real embedding lookup
        flops = counted_flops(step)
        seconds = time_steps(step, steps)
        matmul_share = matmul_time_share(step) if part == "dense part" else None
        rows.append(
            {
                "fm": name,
                "part": part,
                "precision": "bf16 autocast" if bf16 else "fp32",
                "batch": batch_size,
                "flops_per_step": flops,
                "seconds_per_step": seconds,
                "examples_per_s": batch_size / seconds,
                "achieved_flops": flops / seconds,
                "matmul_time_share": matmul_share,
                "matmul_kernel_flops": flops / (seconds * matmul_share) if matmul_share else None,
            }
        )
    return rows


def main() -> None:
    args = parse_args("mfu", __doc__.splitlines()[0])
    torch.set_num_threads(2)
    load_before = os.getloadavg()
    size, repeats = (2048, 5) if args.quick else (4096, 10)
    peaks = {
        "fp32": peak_flops(torch.float32, size, repeats),
        "bf16": peak_flops(torch.bfloat16, size, repeats),
    }
    path = ROOT / ".cache" / "data" / "simulated-mfu"
    if not path.exists():
        simulate_to(SIMULATOR, path, progress=False)
    log = EventLog(path)
    frame = next(iter_frames(log, list(log.spec.features)))[1]
    batch_size, steps = (1024, 2) if args.quick else (4096, 4)
    fms = {"demo_fm": FMS["demo_fm"]} if args.quick else FMS
    rows: list[dict[str, Any]] = []
    for name, config in fms.items():
        for bf16 in (False, True):
            rows.extend(measure(name, config, log, frame, batch_size, steps, bf16))
    machine_peak = max(peaks.values())
    best_precision = max(peaks, key=peaks.get)  # type: ignore[arg-type]
    for row in rows:
        row["mfu"] = row["achieved_flops"] / machine_peak
        row["mfu_vs_own_precision_peak"] = (
            row["achieved_flops"] / peaks["fp32" if row["precision"] == "fp32" else "bf16"]
        )
    print(
        f"peak ({size}^3 matmul): fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s; "
        f"machine peak = {best_precision}; CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print_table("FM training MFU against the machine's measured peak (FlopCounterMode FLOPs / time)", rows)
    best_dense = max((r for r in rows if r["part"] == "dense part"), key=lambda r: r["mfu"])
    demo_dense = max(
        (r for r in rows if r["part"] == "dense part" and r["fm"] == "demo_fm"), key=lambda r: r["mfu"]
    )
    ratios = {
        "machine_peak_flops": machine_peak,
        "machine_peak_precision": best_precision,
        "bf16_over_fp32_peak": peaks["bf16"] / peaks["fp32"],
        "demo_fm_dense_mfu": demo_dense["mfu"],
        "demo_fm_dense_config": demo_dense["precision"],
        "best_dense_mfu": best_dense["mfu"],
        "best_dense_config": f"{best_dense['fm']} {best_dense['precision']}",
    }
    print(ratios)
    write_result(
        args,
        "mfu",
        rows,
        ratios,
        peaks=peaks,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
    )


if __name__ == "__main__":
    main()
