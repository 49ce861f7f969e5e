"""Wall-clock time of one kernel call: the median of a few repeats after a warm-up, synchronizing CUDA.

The probe times every candidate on the same input, so the ratio to float32 (the speed-up) is what counts;
a handful of repeats keeps a probe cheap enough to run beside training or in tests.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_time(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int = 5, warmup: int = 1
) -> float:
    """Seconds per `fn(x)`, the median over `repeats` timed calls."""
    cuda = x.is_cuda

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(x.device)

    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        sync()
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn(x)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)
