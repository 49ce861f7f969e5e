"""Model FLOPs utilisation of FM training on this CPU, fp32 and bf16 autocast, against a measured peak.

Peak: a large square matmul (fp32 and bf16; bf16 uses AMX on CPUs that have it). Model FLOPs:
`torch.utils.flop_counter.FlopCounterMode` over one forward + backward (matmuls only; embedding
lookups, element-wise ops and norms are not counted). Two measurements per precision:

- "dense part": forward + backward + Adam step of the FM's dense modules (dense arch, interaction,
  heads) on fixed token inputs: the part MFU is about;
- "full train_step": `Trainer.train_step` on real batches (embedding lookups, the fused TBE update,
  KJT handling included), the throughput a user sees.

Both are reported against the bf16 peak (the machine's best) and the fp32 peak.

    python bench/mfu.py [--quick] [--out FILE]
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repo on sys.path)
import torch
from _common import ROOT, parse_args, print_table, write_result
from torch.utils.flop_counter import FlopCounterMode

from fxrec.config import ModelConfig, TrainConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.reader import iter_frames
from fxrec.data.simulator import SimulatorConfig, simulate_to
from fxrec.models.ranking import build_model
from fxrec.train.trainer import Trainer

# The demo FM (configs/demo.yaml), and a wider one: MFU on CPU is a question of matmul sizes.
FMS: dict[str, ModelConfig] = {
    "demo_fm": ModelConfig(
        name="fm",
        role="fm",
        embedding_dim=32,
        interaction={"name": "dcnv2", "num_layers": 3, "low_rank": 64},
        heads={"kind": "shared_bottom", "hidden": [256, 128]},
    ),
    "wide_fm": ModelConfig(
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
SIMULATOR = SimulatorConfig(seed=5, days=2, impressions_per_day=20_000, users=5_000, ads=800)


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

    # The dense part: everything after the embedding lookup, on fixed tokens.
    with torch.no_grad():
        tokens, sequence = model.tokens(batches[0])
    tokens = tokens.detach()
    labels = batches[0].labels["click"]
    dense_params = [p for n, p in model.named_parameters() if not n.startswith("sparse_arch")]
    optimizer = torch.optim.Adam(dense_params, lr=1e-3)

    def dense_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(bf16):
            out = model.interaction(tokens)
            logits = model.heads(out.reshape(out.shape[0], -1))["click"]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        loss.backward()
        optimizer.step()

    rows = []
    for part, step in (("dense part", dense_step), ("full train_step", full_step)):
        flops = counted_flops(step)
        seconds = time_steps(step, steps)
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
    for row in rows:
        row["mfu_vs_bf16_peak"] = row["achieved_flops"] / peaks["bf16"]
        row["mfu_vs_own_peak"] = (
            row["achieved_flops"] / peaks["bf16" if row["precision"] != "fp32" else "fp32"]
        )
    print(
        f"peak: fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s ({size}^3 matmul)"
    )
    print_table("FM training MFU (FlopCounterMode matmul FLOPs / time)", rows)
    best_dense = max((r for r in rows if r["part"] == "dense part"), key=lambda r: r["mfu_vs_bf16_peak"])
    ratios = {
        "best_dense_mfu_vs_bf16_peak": best_dense["mfu_vs_bf16_peak"],
        "best_dense_config": f"{best_dense['fm']} {best_dense['precision']}",
        "bf16_over_fp32_peak": peaks["bf16"] / peaks["fp32"],
    }
    print(ratios)
    write_result(
        args,
        "mfu",
        rows,
        ratios,
        peaks=peaks,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
    )


if __name__ == "__main__":
    main()
