"""Measurement helpers shared by bench/jagged_attention.py and bench/gdpa.py.

Peak memory is the high-water mark of live bytes handed out by PyTorch's CPU allocator during one
forward + backward, above what was live before it (inputs, upstream gradient). It is read from the
allocator's own reports to the profiler (`profile_memory=True`: one event per allocation and free,
with its size), summed in time order. tracemalloc cannot see these allocations and process RSS is
blurred by glibc caching, so this is the honest per-call number. Time is measured in separate,
unprofiled runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def peak_bytes(step: Callable[[], None]) -> int:
    """Peak extra bytes allocated by torch while `step()` runs (see module docstring)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def best_seconds(
    step: Callable[[], None], min_reps: int = 3, max_reps: int = 6, budget_s: float = 1.0
) -> float:
    """Fastest of a few runs (min is the least noisy statistic on a shared machine)."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - started < budget_s):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
        if times[-1] > 2 * budget_s:  # one long run is already a stable number
            break
    return min(times)


def interleaved_best_seconds(
    steps: dict[str, Callable[[], None]], min_reps: int = 3, max_reps: int = 8, budget_s: float = 1.0
) -> dict[str, float]:
    """`best_seconds` of several methods measured round-robin, so a load change on a shared machine hits
    all of them alike and their ratio stays fair."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    started = time.perf_counter()
    for rep in range(max_reps):
        if rep >= min_reps and time.perf_counter() - started > budget_s * len(steps):
            break
        for name, step in steps.items():
            if times[name] and times[name][-1] > 2 * budget_s:  # one long run is already a stable number
                continue
            begin = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - begin)
    return {name: min(values) for name, values in times.items()}


def ragged_lengths(batch: int, max_len: int, mean_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) int64 lengths in [1, max_len] with mean ~ mean_ratio * max_len: most short, a few long.

    Beta(1, (1 - r) / r) is skewed toward short histories with a long tail; r = 1 gives all max_len.
    """
    if mean_ratio >= 1.0:
        return torch.full((batch,), max_len, dtype=torch.int64)
    beta = torch.distributions.Beta(torch.tensor(1.0), torch.tensor((1.0 - mean_ratio) / mean_ratio))
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        fractions = beta.sample((batch,))
    return (fractions * max_len).round().clamp(1, max_len).to(torch.int64)


def offsets_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


def jagged_grid(quick: bool) -> list[tuple[int, int, float, int, int]]:
    """The (batch, max_len, mean/max length, heads, head_dim) grid both kernel benchmarks sweep."""
    if quick:
        return [(64, 256, r, h, d) for r in (0.25, 1.0) for h, d in ((1, 64), (4, 32))]
    return [
        (b, length, r, h, d)
        for b in (64, 256)
        for length in (128, 512, 1024)
        for r in (0.1, 0.25, 0.5, 1.0)
        for h, d in ((1, 64), (4, 32))
    ]


def method_rows(
    config: dict,
    methods: list[str],
    steps: dict[str, Callable[[], object]],
    peaks: dict[str, int],
    notes: dict[str, str],
) -> list[dict]:
    """One row per method of a benchmark config: interleaved best time and peak memory, or None for the
    methods with no step (their note says why)."""
    seconds = interleaved_best_seconds(steps)  # round-robin: load changes hit every method alike
    rows = []
    for name in methods:
        measured = name in steps
        rows.append(
            {
                **config,
                "method": name,
                "ms": seconds[name] * 1e3 if measured else None,
                "peak_mb": peaks[name] / 2**20 if measured else None,
                "note": notes.get(name, ""),
            }
        )
    return rows
