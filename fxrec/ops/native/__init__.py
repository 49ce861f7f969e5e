"""fxrec's C++ CPU kernels, compiled on first use with the machine's C++ compiler.

`load()` builds `jagged_attention.cpp` once per source version (torch caches the build under
~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR) and registers its ops as `torch.ops.fxrec_native.*`.
It returns False, after one warning, when no compiler is available: callers then keep to the
pure-PyTorch kernels. FXREC_NATIVE=0 turns the native kernels off.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name("jagged_attention.cpp")]
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]


@cache
def load() -> bool:
    """True once the native ops are registered; False (with one warning) if they cannot be built."""
    if os.environ.get("FXREC_NATIVE", "1") == "0":
        return False
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(
            name="fxrec_native",
            sources=[str(path) for path in SOURCES],
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a broken toolchain: fall back, loudly once
        log.warning("fxrec native kernels unavailable, using the PyTorch kernels instead: %s", error)
        return False
    return hasattr(torch.ops.fxrec_native, "jagged_attention_forward")
