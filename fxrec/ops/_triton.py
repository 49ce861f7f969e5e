"""Pieces shared by fxrec's Triton kernels (GPU; CPU only under TRITON_INTERPRET=1)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_rows(ptr, begin, offs, ok, stride, col0, offs_c, C):
    """A (rows, cols) tile of a jagged (sum_len, H * C) tensor: rows `begin + offs` where `ok`, columns
    `col0 + offs_c` below C (one head's slice); zeros outside, so ragged edges add nothing."""
    return tl.load(ptr + (begin + offs)[:, None] * stride + col0 + offs_c[None, :],
                   mask=ok[:, None] & (offs_c < C)[None, :], other=0.0)


def block_size(size: int) -> int:
    """The tile width for a head dimension: a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(size))
