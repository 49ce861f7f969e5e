"""GDPA (Kunlun's PFFN as attention), forward + backward: fxrec cpu vs the padded einsum reference.

Jagged queries (sum_len, H, D) over short dense per-example keys/values (B, T, H, D) with T = 256 (the
FFN hidden size of Kunlun's kernel tuning note), activation gelu, scale 1/max_len. The einsum baseline
is fxrec's reference backend: pad q to (B, max_len), two einsums with the activation and masks in
between, unpad, autograd backward. Time: best of a few runs, the two methods taking turns; memory: peak
torch-allocated bytes above the inputs (fxrec.ops.benchmarking). torch threads: 1, fp32.
"""

from __future__ import annotations

import math
from typing import Any

import _common
import torch

from fxrec.ops import gdpa
from fxrec.ops.benchmarking import (
    jagged_grid,
    method_rows,
    offsets_from_lengths,
    peak_bytes,
    ragged_lengths,
)

KEYS = 256
# the einsum baseline keeps ~5 (B, H, max_len, T) fp32 tensors alive; skip it beyond 0.5 GiB each
EINSUM_LIMIT = 2**27
METHODS = {"fxrec_cpu": "cpu", "einsum_padded": "reference"}


def measure(batch: int, max_len: int, ratio: float, heads: int, dim: int, seed: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = ragged_lengths(batch, max_len, ratio, generator)
    offsets = offsets_from_lengths(lengths)
    total = int(offsets[-1])
    q = torch.randn(total, heads, dim, generator=generator).requires_grad_()
    k, v = (
        torch.randn(batch, KEYS, heads, dim, generator=generator).div_(dim**0.5).requires_grad_()
        for _ in range(2)
    )
    grad = torch.randn(total, heads, dim, generator=generator)
    config = {
        "B": batch,
        "L": max_len,
        "ratio": ratio,
        "H": heads,
        "D": dim,
        "T": KEYS,
        "mean_over_max": round(float(lengths.float().mean()) / max_len, 3),
    }
    steps, peaks, notes, first_out = {}, {}, {}, None
    for name, backend in METHODS.items():
        if name == "einsum_padded" and batch * heads * max_len * KEYS > EINSUM_LIMIT:
            notes[name] = "skipped: padded scores B*H*L*T too large for this shared machine"
            continue

        def step(backend=backend) -> None:
            for tensor in (q, k, v):
                tensor.grad = None
            gdpa(q, k, v, offsets, max_len, activation="gelu", backend=backend).backward(grad)

        steps[name] = step
        for tensor in (q, k, v):  # freed outside the profiled region, so no method is credited with them
            tensor.grad = None
        peaks[name] = peak_bytes(step)
        with torch.no_grad():
            out = gdpa(q, k, v, offsets, max_len, activation="gelu", backend=backend)
        notes[name] = (
            "" if first_out is None else f"max|out - fxrec| = {float((out - first_out).abs().max()):.1e}"
        )
        first_out = out if first_out is None else first_out
    return method_rows(config, list(METHODS), steps, peaks, notes)


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per config: einsum time / fxrec time and einsum peak / fxrec peak (> 1 means fxrec wins)."""
    per_config, summary = [], {}
    for ours, other in zip(rows[::2], rows[1::2], strict=True):
        entry = {key: ours[key] for key in ("B", "L", "ratio", "H", "D")}
        entry["speedup_vs_einsum"] = other["ms"] / ours["ms"] if other["ms"] else None
        entry["memory_saving_vs_einsum"] = other["peak_mb"] / ours["peak_mb"] if other["peak_mb"] else None
        per_config.append(entry)
    for ratio in sorted({e["ratio"] for e in per_config}):
        group = [e for e in per_config if e["ratio"] == ratio]
        stats = {}
        for field in ("speedup_vs_einsum", "memory_saving_vs_einsum"):
            values = [e[field] for e in group if e[field] is not None]
            if values:
                stats[field] = {
                    "geomean": math.exp(sum(map(math.log, values)) / len(values)),
                    "min": min(values),
                    "max": max(values),
                    "configs": len(values),
                }
        summary[str(ratio)] = stats
    return {"per_config": per_config, "by_ratio": summary}


def main() -> None:
    args = _common.parse_args("gdpa", __doc__.splitlines()[0])
    torch.set_num_threads(1)
    grid = jagged_grid(args.quick)
    rows = []
    for index, (batch, max_len, ratio, heads, dim) in enumerate(grid):
        rows += measure(batch, max_len, ratio, heads, dim, seed=index)
        print(
            f"[{index + 1}/{len(grid)}] B={batch} L={max_len} r={ratio} H={heads} D={dim}: "
            + ", ".join(
                f"{r['method']}={r['ms']:.1f}ms/{r['peak_mb']:.0f}MB" if r["ms"] else f"{r['method']}=-"
                for r in rows[-2:]
            ),
            flush=True,
        )
    result = ratios(rows)
    _common.print_table(
        f"GDPA fwd+bwd, T={KEYS}, gelu (1 thread, fp32)",
        rows,
        ["B", "L", "ratio", "mean_over_max", "H", "D", "method", "ms", "peak_mb", "note"],
    )
    _common.print_table("fxrec cpu vs einsum (> 1: fxrec faster / smaller)", result["per_config"])
    for ratio, stats in result["by_ratio"].items():
        print(
            f"mean/max={ratio}: "
            + "; ".join(
                f"{k} geomean {v['geomean']:.2f} (min {v['min']:.2f}, max {v['max']:.2f})"
                for k, v in stats.items()
            )
        )
    _common.write_result(
        args,
        "gdpa",
        rows,
        result,
        threads=1,
        dtype="float32",
        keys=KEYS,
        memory_metric="peak torch CPU allocator bytes above inputs, via profiler memory events",
    )


if __name__ == "__main__":
    main()
