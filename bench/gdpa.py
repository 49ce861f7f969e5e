"""GDPA (Kunlun's PFFN as attention), forward + backward: fxrec cpu vs padded matmuls vs FBGEMM's jagged bmm.

Jagged queries (sum_len, H, D) over short dense per-example keys/values (B, T, H, D) with T = 256 (the
FFN hidden size of Kunlun's kernel tuning note), activation gelu, scale 1/max_len, no window. Every
method starts from the same jagged q and dense k, v and ends with a jagged output and the input
gradients, so padding and unpadding are part of a padded method's cost (what an arch that receives
jagged histories pays). The methods:

- fxrec_cpu: `fxrec.ops.gdpa`, the cpu backend (the native C++ kernel);
- padded_matmul: what a user would write first, and the independent baseline: q padded to
  (B, H, max_len, D), torch.matmul, gelu, torch.matmul, times the scale, unpadded; autograd backward.
  No mask: padded query rows are zero, so their scores are 0, gelu(0) = 0, and unpadding drops them;
- fbgemm_jagged: FBGEMM's `torch.ops.fbgemm.jagged_dense_bmm` (fbgemm-gpu-cpu, CPU kernel with its own
  autograd, whose backward runs jagged_dense_bmm and jagged_jagged_bmm) for both matmuls, gelu on the
  jagged scores in between: no padding at all. The op is single-head, so heads are folded into the
  batch (q transposed to (H, sum_len, D), offsets per (head, example)), a copy this layout costs.
  Its CPU kernel is a plain scalar loop (no BLAS, one thread), seconds per step at a few million
  scores, so it is skipped beyond FBGEMM_LIMIT jagged scores;
- einsum_padded: fxrec's own reference backend (padded einsums, an extra mask multiply): the oracle.

Time: best of a few runs, the methods taking turns (round-robin, so load from other jobs on a shared
machine hits all alike); memory: peak torch-allocated bytes above the inputs (fxrec.ops.benchmarking).
Ratios are baseline / fxrec (> 1: fxrec faster or smaller), summarised per mean/max length ratio by
their geometric mean, min, median and max over the grid's configs. torch threads: 1, fp32.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import _common
import fbgemm_gpu  # noqa: F401  registers torch.ops.fbgemm.jagged_* (CPU kernels)
import torch
import torch.nn.functional as F

from fxrec.ops import gdpa
from fxrec.ops.benchmarking import (
    jagged_grid,
    method_rows,
    offsets_from_lengths,
    peak_bytes,
    ragged_lengths,
)

KEYS = 256
# the padded baselines keep ~4-5 (B, H, max_len, T) fp32 tensors alive; skip them beyond 0.5 GiB each
PADDED_LIMIT = 2**27
# FBGEMM's scalar-loop CPU bmm: ~3 s per fwd+bwd at 2^22 jagged scores (sum_len * H * T) on this machine
FBGEMM_LIMIT = 2**23

Method = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _fxrec(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, max_len: int
) -> torch.Tensor:
    return gdpa(q, k, v, offsets, max_len, activation="gelu", backend="cpu")


def _padded_matmul(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, max_len: int
) -> torch.Tensor:
    batch, heads, dim = offsets.numel() - 1, q.shape[1], q.shape[2]
    lengths = offsets[1:] - offsets[:-1]
    rows = (torch.arange(max_len)[None, :] < lengths[:, None]).reshape(-1).nonzero().flatten()
    padded = q.new_zeros(batch * max_len, heads, dim).index_copy(0, rows, q)
    padded = padded.view(batch, max_len, heads, dim).transpose(1, 2)  # (B, H, L, D)
    scores = torch.matmul(padded, k.permute(0, 2, 3, 1))  # (B, H, L, T)
    out = torch.matmul(F.gelu(scores), v.transpose(1, 2)) * (1.0 / max_len)  # (B, H, L, Dv)
    return out.transpose(1, 2).reshape(batch * max_len, heads, v.shape[3]).index_select(0, rows)


def _fbgemm_jagged(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, max_len: int
) -> torch.Tensor:
    rows, heads, dim = q.shape
    batch, keys = k.shape[0], k.shape[1]
    # (head, example) pairs as the batch: head h's rows follow head h-1's
    folded = torch.cat(
        [(offsets[:-1] + h * rows) for h in range(heads)] + [offsets.new_tensor([heads * rows])]
    )
    values = q.transpose(0, 1).reshape(heads * rows, dim)
    keys_t = k.permute(2, 0, 3, 1).reshape(heads * batch, dim, keys)  # (H * B, D, T)
    scores, _ = torch.ops.fbgemm.jagged_dense_bmm(values, folded, keys_t, max_len)  # (H * sum_len, T)
    values_t = v.permute(2, 0, 1, 3).reshape(heads * batch, keys, v.shape[3])  # (H * B, T, Dv)
    out, _ = torch.ops.fbgemm.jagged_dense_bmm(F.gelu(scores), folded, values_t, max_len)
    return (out * (1.0 / max_len)).view(heads, rows, v.shape[3]).transpose(0, 1)


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, max_len: int
) -> torch.Tensor:
    return gdpa(q, k, v, offsets, max_len, activation="gelu", backend="reference")


METHODS: dict[str, Method] = {
    "fxrec_cpu": _fxrec,
    "padded_matmul": _padded_matmul,
    "fbgemm_jagged": _fbgemm_jagged,
    "einsum_padded": _reference,
}
BASELINES = [name for name in METHODS if name != "fxrec_cpu"]


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
    for name, fn in METHODS.items():
        if name in ("padded_matmul", "einsum_padded") and batch * heads * max_len * KEYS > PADDED_LIMIT:
            notes[name] = "skipped: padded scores B*H*L*T too large for this shared machine"
            continue
        if name == "fbgemm_jagged" and total * heads * KEYS > FBGEMM_LIMIT:
            notes[name] = "skipped: FBGEMM's CPU jagged_dense_bmm is a scalar loop, seconds per step here"
            continue

        def step(fn: Method = fn) -> None:
            for tensor in (q, k, v):
                tensor.grad = None
            fn(q, k, v, offsets, max_len).backward(grad)

        steps[name] = step
        for tensor in (q, k, v):  # freed outside the profiled region, so no method is credited with them
            tensor.grad = None
        peaks[name] = peak_bytes(step)
        with torch.no_grad():
            out = fn(q, k, v, offsets, max_len)
        notes[name] = (
            "" if first_out is None else f"max|out - fxrec| = {float((out - first_out).abs().max()):.1e}"
        )
        first_out = out if first_out is None else first_out
    return method_rows(config, list(METHODS), steps, peaks, notes)


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per config: baseline time / fxrec time and baseline peak / fxrec peak (> 1 means fxrec wins), and
    their spread per mean/max ratio."""
    by_config: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_config.setdefault((row["B"], row["L"], row["ratio"], row["H"], row["D"]), {})[row["method"]] = row
    per_config, summary = [], {}
    for key, methods in by_config.items():
        ours = methods["fxrec_cpu"]
        entry = dict(zip(("B", "L", "ratio", "H", "D"), key, strict=True))
        for baseline in BASELINES:
            other = methods[baseline]
            entry[f"speedup_vs_{baseline}"] = other["ms"] / ours["ms"] if other["ms"] else None
            entry[f"memory_saving_vs_{baseline}"] = (
                other["peak_mb"] / ours["peak_mb"] if other["peak_mb"] else None
            )
        per_config.append(entry)
    for ratio in sorted({e["ratio"] for e in per_config}):
        group = [e for e in per_config if e["ratio"] == ratio]
        stats = {}
        for field in [f for f in group[0] if f.startswith(("speedup", "memory"))]:
            values = [e[field] for e in group if e[field] is not None]
            if values:
                stats[field] = {
                    "geomean": math.exp(sum(map(math.log, values)) / len(values)),
                    "min": min(values),
                    "median": statistics.median(values),
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
                for r in rows[-len(METHODS) :]
            ),
            flush=True,
        )
    result = ratios(rows)
    _common.print_table(
        f"GDPA fwd+bwd, T={KEYS}, gelu (1 thread, fp32)",
        rows,
        ["B", "L", "ratio", "mean_over_max", "H", "D", "method", "ms", "peak_mb", "note"],
    )
    _common.print_table("fxrec cpu vs baselines (> 1: fxrec faster / smaller)", result["per_config"])
    for ratio, stats in result["by_ratio"].items():
        print(
            f"mean/max={ratio}: "
            + "; ".join(
                f"{k} geomean {v['geomean']:.2f} "
                f"(min {v['min']:.2f}, median {v['median']:.2f}, max {v['max']:.2f})"
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
        fbgemm_ops="torch.ops.fbgemm.jagged_dense_bmm (forward; its autograd backward runs jagged_dense_bmm "
        "and jagged_jagged_bmm), heads folded into the batch",
        memory_metric="peak torch CPU allocator bytes above inputs, via profiler memory events",
    )


if __name__ == "__main__":
    main()
