"""Shared ragged batches for the ops tests: empty and length-1 sequences always included."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# (lengths, max_len): empty first/middle/last, length 1, a full-length sequence, and mixed lengths
RAGGED_LENGTHS = [0, 1, 7, 0, 19, 3, 24, 24, 1, 0]
MAX_LEN = 24


def offsets_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)


def grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Gradients of a fixed, non-uniform linear function of `out` (so every output element matters)."""
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=torch.float32).view(out.shape)
    return torch.autograd.grad((out.float() * weights).sum(), inputs)


def assert_close_all(actual: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...], atol: float,
                     rtol: float) -> None:
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        torch.testing.assert_close(a.float(), e.float(), atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def flop_counts(run: Callable[[], torch.Tensor]) -> tuple[int, int]:
    """FLOPs of `run()` (a forward) and of its backward, each under its own FlopCounterMode."""
    with FlopCounterMode(display=False) as forward:
        out = run()
    weights = torch.linspace(-1.0, 1.0, out.numel()).view(out.shape)
    with FlopCounterMode(display=False) as backward:
        (out * weights).sum().backward()
    return forward.get_total_flops(), backward.get_total_flops()
