"""Rotary encodings on jagged rows: RoPE by position, and Kunlun's ROTE by log time gap.

Both rotate channel pairs (i, i + dh/2) of q and k by angle `t * base^(-2i/dh)`, so q_i . k_j depends on
t_i - t_j only. RoPE takes t = position within the example; ROTE takes t = log(1 + age seconds), which
spaces a minute, a day and a month ago roughly evenly instead of letting the recent past blur together.
"""

from __future__ import annotations

import torch


def rotary_angles(t: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """(N,) "time" -> (N, head_dim // 2) rotation angles."""
    half = head_dim // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float32, device=t.device) / half)
    return t.float()[:, None] * freqs[None, :]


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate x (N, H, dh) by angles (N, dh // 2), shared across heads (dh must be even)."""
    half = x.shape[-1] // 2
    cos = angles.cos()[:, None, :].to(x.dtype)
    sin = angles.sin()[:, None, :].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def log_time(ages: torch.Tensor) -> torch.Tensor:
    """ROTE's clock: tau = log(1 + age), ages in seconds (negative ages, i.e. bad data, clamp to 0)."""
    return torch.log1p(ages.float().clamp(min=0))


class Rotary(torch.nn.Module):
    """Applies RoPE (`mode="position"`), ROTE (`mode="time"`) or nothing (`mode="none"`) to q and k.

    q, k: (N, H, dh); positions (N,) int; ages (N,) seconds or None (then "time" falls back to positions).

    Example::

        rot = Rotary(head_dim=8, mode="time")
        q = rot(torch.randn(5, 2, 8), positions=torch.arange(5), ages=torch.rand(5) * 1e5)
    """

    def __init__(self, head_dim: int, mode: str = "position", base: float | None = None):
        super().__init__()
        if mode not in ("position", "time", "none"):
            raise ValueError(f"rotary mode must be 'position', 'time' or 'none', got {mode!r}")
        if mode != "none" and head_dim % 2:
            raise ValueError(f"rotary encoding needs an even head dim, got {head_dim}")
        self.head_dim = head_dim
        self.mode = mode
        # log(1 + age) only spans ~0..17 for ages up to a year, so ROTE uses a much smaller base than
        # RoPE's 10000: the slowest channel pair still turns by a visible angle across that span.
        self.base = base if base is not None else (10000.0 if mode == "position" else 100.0)

    def angles(self, positions: torch.Tensor, ages: torch.Tensor | None) -> torch.Tensor | None:
        if self.mode == "none":
            return None
        t = log_time(ages) if self.mode == "time" and ages is not None else positions
        return rotary_angles(t, self.head_dim, self.base)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, ages: torch.Tensor | None = None
    ) -> torch.Tensor:
        angles = self.angles(positions, ages)
        return x if angles is None else apply_rotary(x, angles)
