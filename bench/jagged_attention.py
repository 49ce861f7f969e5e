"""Jagged self-attention, forward + backward: fxrec cpu vs padded dense SDPA vs PyTorch NJT SDPA vs FBGEMM SLL.

Every method starts from the same jagged q, k, v (sum_len, H, D) and ends with a jagged output and
jagged input gradients, so padding and unpadding are part of the padded baselines' cost (that is what
an arch that receives jagged histories pays). Standard softmax attention, no causal mask; FBGEMM's SLL
op normalises by max_len and skips 1/sqrt(D), which costs the same. Time: best of a few runs, the methods
taking turns (round-robin, so load from other jobs on a shared machine hits all alike); memory:
peak torch-allocated bytes above the inputs (fxrec.ops.benchmarking). torch threads: 1.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import _common
import fbgemm_gpu.sll  # noqa: F401  registers torch.ops.fbgemm.sll_* (not loaded by `import fbgemm_gpu`)
import torch
import torch.nn.functional as F

from fxrec.ops import jagged_self_attention
from fxrec.ops.benchmarking import (
    jagged_grid,
    method_rows,
    offsets_from_lengths,
    peak_bytes,
    ragged_lengths,
)

# the materialising baselines (NJT's padded math fallback, SLL's per-sequence N^2 scores) get skipped
# above this many score elements: they would need several GiB and minutes on a shared 2-core machine
MATERIALISE_LIMIT = 2**27


def _fxrec(q, k, v, offsets, max_len):
    return jagged_self_attention(q, k, v, offsets, max_len, backend="cpu")


def _padded(q, k, v, offsets, max_len):
    batch, heads, dim = offsets.numel() - 1, q.shape[1], q.shape[2]
    lengths = offsets[1:] - offsets[:-1]
    valid = torch.arange(max_len)[None, :] < lengths[:, None]  # (B, L)
    rows = valid.reshape(-1).nonzero().flatten()

    def pad(x: torch.Tensor) -> torch.Tensor:  # (sum_len, H, D) -> (B, H, L, D)
        dense = x.new_zeros(batch * max_len, heads, x.shape[2]).index_copy(0, rows, x)
        return dense.view(batch, max_len, heads, x.shape[2]).transpose(1, 2)

    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=valid[:, None, None, :])
    return out.transpose(1, 2).reshape(batch * max_len, heads, dim).index_select(0, rows)


def _njt(q, k, v, offsets, max_len):
    def nest(x: torch.Tensor) -> torch.Tensor:  # (B, j, H, D) -> (B, H, j, D)
        return torch.nested.nested_tensor_from_jagged(x, offsets, max_seqlen=max_len).transpose(1, 2)

    return F.scaled_dot_product_attention(nest(q), nest(k), nest(v)).transpose(1, 2).values()


def _sll(q, k, v, offsets, max_len):
    out = torch.ops.fbgemm.sll_jagged_flash_attention_basic(q[:, 0], k[:, 0], v[:, 0], offsets, max_len)
    return out[:, None]


METHODS = {"fxrec_cpu": _fxrec, "padded_sdpa": _padded, "njt_sdpa": _njt, "fbgemm_sll": _sll}


def _skip_reason(method: str, batch: int, max_len: int, heads: int, lengths: torch.Tensor) -> str | None:
    if method == "fbgemm_sll":
        if heads > 1:
            return "n/a: SLL CPU op is single-head (sll_multi_head_jagged_flash_attention is CUDA-only)"
        if int((lengths * lengths).sum()) > MATERIALISE_LIMIT:
            return "skipped: materialises sum(len^2) scores"
    if method == "njt_sdpa" and batch * heads * max_len * max_len > MATERIALISE_LIMIT:
        return "skipped: CPU NJT SDPA falls back to padded math, B*H*L^2 scores"
    return None


def measure(batch: int, max_len: int, ratio: float, heads: int, dim: int, seed: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = ragged_lengths(batch, max_len, ratio, generator)
    offsets = offsets_from_lengths(lengths)
    total = int(offsets[-1])
    q, k, v = (torch.randn(total, heads, dim, generator=generator).requires_grad_() for _ in range(3))
    grad = torch.randn(total, heads, dim, generator=generator)
    config = {
        "B": batch,
        "L": max_len,
        "ratio": ratio,
        "H": heads,
        "D": dim,
        "mean_over_max": round(float(lengths.float().mean()) / max_len, 3),
    }
    reference_out = None
    steps, peaks, notes = {}, {}, {}
    for name, fn in METHODS.items():
        reason = _skip_reason(name, batch, max_len, heads, lengths)
        if reason:
            notes[name] = reason
            continue

        def step(fn=fn) -> torch.Tensor:
            for tensor in (q, k, v):
                tensor.grad = None
            out = fn(q, k, v, offsets, max_len)
            out.backward(grad)
            return out

        steps[name] = step
        for tensor in (q, k, v):  # freed outside the profiled region, so no method is credited with them
            tensor.grad = None
        peaks[name] = peak_bytes(step)
        notes[name] = ""
        if name in ("fxrec_cpu", "padded_sdpa", "njt_sdpa"):
            with torch.no_grad():
                out = fn(q, k, v, offsets, max_len)
            if reference_out is None:
                reference_out = out
            else:
                notes[name] = f"max|out - fxrec| = {float((out - reference_out).abs().max()):.1e}"
    return method_rows(config, list(METHODS), steps, peaks, notes)


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per config: baseline time / fxrec time and baseline peak / fxrec peak (> 1 means fxrec wins)."""
    by_config: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_config.setdefault((row["B"], row["L"], row["ratio"], row["H"], row["D"]), {})[row["method"]] = row
    per_config, summary = [], {}
    for key, methods in by_config.items():
        ours = methods["fxrec_cpu"]
        entry = dict(zip(("B", "L", "ratio", "H", "D"), key, strict=True))
        for baseline in ("padded_sdpa", "njt_sdpa", "fbgemm_sll"):
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
                    "max": max(values),
                    "configs": len(values),
                }
        summary[str(ratio)] = stats
    return {"per_config": per_config, "by_ratio": summary}


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")  # NJT "prototype" and profiler chatter
    args = _common.parse_args(
        "jagged_attention",
        __doc__.splitlines()[0],
        extra=[
            (
                ("--max-lens",),
                dict(
                    type=int,
                    nargs="+",
                    help="only these max_len values of the grid (same seeds as the "
                    "full run); the JSON is written only with an explicit --out",
                ),
            ),
            (
                ("--ratios",),
                dict(type=float, nargs="+", help="only these mean/max ratios of the grid (as --max-lens)"),
            ),
        ],
    )
    torch.set_num_threads(1)
    grid = jagged_grid(args.quick)
    rows = []
    for index, (batch, max_len, ratio, heads, dim) in enumerate(grid):
        if (args.max_lens and max_len not in args.max_lens) or (args.ratios and ratio not in args.ratios):
            continue  # seeds stay the grid index, so a partial run measures the same batches
        rows += measure(batch, max_len, ratio, heads, dim, seed=index)
        done = rows[-len(METHODS) :]
        print(
            f"[{index + 1}/{len(grid)}] B={batch} L={max_len} r={ratio} H={heads} D={dim}: "
            + ", ".join(
                f"{r['method']}={r['ms']:.1f}ms/{r['peak_mb']:.0f}MB" if r["ms"] else f"{r['method']}=-"
                for r in done
            ),
            flush=True,
        )
    result = ratios(rows)
    _common.print_table(
        "jagged self-attention fwd+bwd (1 thread, fp32)",
        rows,
        ["B", "L", "ratio", "mean_over_max", "H", "D", "method", "ms", "peak_mb", "note"],
    )
    _common.print_table("fxrec cpu vs baselines (> 1: fxrec faster / smaller)", result["per_config"])
    for ratio, stats in result["by_ratio"].items():
        print(
            f"mean/max={ratio}: "
            + "; ".join(
                f"{k} geomean {v['geomean']:.2f} (min {v['min']:.2f}, max {v['max']:.2f})"
                for k, v in stats.items()
            )
        )
    partial = args.max_lens or args.ratios
    if partial and "--out" not in sys.argv:
        print("partial grid: not written (pass --out to keep it)")
        return
    _common.write_result(
        args,
        "jagged_attention",
        rows,
        result,
        threads=1,
        dtype="float32",
        memory_metric="peak torch CPU allocator bytes above inputs, via profiler memory events",
    )


if __name__ == "__main__":
    main()
