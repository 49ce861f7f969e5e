"""Jagged self-attention, forward + backward: fxrec cpu vs padded dense SDPA vs PyTorch NJT SDPA vs FBGEMM SLL.

Every method starts from the same jagged q, k, v (sum_len, H, D) and ends with a jagged output and
jagged input gradients, so padding and unpadding are part of the padded baselines' cost (that is what
an arch that receives jagged histories pays). Standard softmax attention, no causal mask; FBGEMM's SLL
op normalises by max_len and skips 1/sqrt(D), which costs the same. Time: best of a few runs; memory:
peak torch-allocated bytes above the inputs (fxrec.ops.benchmarking). torch threads: 1.
"""

from __future__ import annotations

import math
from typing import Any

import _common
import fbgemm_gpu.sll  # noqa: F401  registers torch.ops.fbgemm.sll_* (not loaded by `import fbgemm_gpu`)
import torch
import torch.nn.functional as F

from fxrec.ops import jagged_self_attention
from fxrec.ops.benchmarking import best_seconds, jagged_grid, offsets_from_lengths, peak_bytes, ragged_lengths

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
    config = {"B": batch, "L": max_len, "ratio": ratio, "H": heads, "D": dim,
              "mean_over_max": round(float(lengths.float().mean()) / max_len, 3)}
    reference_out = None
    rows = []
    for name, fn in METHODS.items():
        reason = _skip_reason(name, batch, max_len, heads, lengths)
        if reason:
            rows.append({**config, "method": name, "ms": None, "peak_mb": None, "note": reason})
            continue

        def step(fn=fn) -> torch.Tensor:
            for tensor in (q, k, v):
                tensor.grad = None
            out = fn(q, k, v, offsets, max_len)
            out.backward(grad)
            return out

        peak = peak_bytes(step)
        seconds = best_seconds(step)
        note = ""
        if name in ("fxrec_cpu", "padded_sdpa", "njt_sdpa"):
            with torch.no_grad():
                out = fn(q, k, v, offsets, max_len)
            if reference_out is None:
                reference_out = out
            else:
                note = f"max|out - fxrec| = {float((out - reference_out).abs().max()):.1e}"
        rows.append({**config, "method": name, "ms": seconds * 1e3, "peak_mb": peak / 2**20, "note": note})
    return rows


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
            entry[f"memory_saving_vs_{baseline}"] = other["peak_mb"] / ours["peak_mb"] if other["peak_mb"] else None
        per_config.append(entry)
    for ratio in sorted({e["ratio"] for e in per_config}):
        group = [e for e in per_config if e["ratio"] == ratio]
        stats = {}
        for field in [f for f in group[0] if f.startswith(("speedup", "memory"))]:
            values = [e[field] for e in group if e[field] is not None]
            if values:
                stats[field] = {"geomean": math.exp(sum(map(math.log, values)) / len(values)),
                                "min": min(values), "max": max(values), "configs": len(values)}
        summary[str(ratio)] = stats
    return {"per_config": per_config, "by_ratio": summary}


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")  # NJT "prototype" and profiler chatter
    args = _common.parse_args("jagged_attention", __doc__.splitlines()[0])
    torch.set_num_threads(1)
    grid = jagged_grid(args.quick)
    rows = []
    for index, (batch, max_len, ratio, heads, dim) in enumerate(grid):
        rows += measure(batch, max_len, ratio, heads, dim, seed=index)
        done = rows[-len(METHODS):]
        print(f"[{index + 1}/{len(grid)}] B={batch} L={max_len} r={ratio} H={heads} D={dim}: "
              + ", ".join(f"{r['method']}={r['ms']:.1f}ms/{r['peak_mb']:.0f}MB" if r["ms"] else f"{r['method']}=-"
                          for r in done), flush=True)
    result = ratios(rows)
    _common.print_table("jagged self-attention fwd+bwd (1 thread, fp32)", rows,
                        ["B", "L", "ratio", "mean_over_max", "H", "D", "method", "ms", "peak_mb", "note"])
    _common.print_table("fxrec cpu vs baselines (> 1: fxrec faster / smaller)", result["per_config"])
    for ratio, stats in result["by_ratio"].items():
        print(f"mean/max={ratio}: " + "; ".join(f"{k} geomean {v['geomean']:.2f} (min {v['min']:.2f}, max {v['max']:.2f})"
                                               for k, v in stats.items()))
    _common.write_result(args, "jagged_attention", rows, result, threads=1, dtype="float32",
                         memory_metric="peak torch CPU allocator bytes above inputs, via profiler memory events")


if __name__ == "__main__":
    main()
