"""fxrec's C++ CPU kernels, compiled on first use with the machine's C++ compiler.

`load()` builds the C++ sources here once per version of them (the build is named by their content hash
and cached by torch under ~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR; the first build takes
~20 s) and registers their CPU kernels for the ops `torch.ops.fxrec_native.*` (declared in
`fxrec.ops.library`).
It returns False, after one warning, when no compiler is available: callers then keep to the
pure-PyTorch kernels. FXREC_NATIVE=0 turns the native kernels off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from functools import cache
from pathlib import Path

import torch

from fxrec.ops import library

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = [HERE / "jagged_attention.cpp", HERE / "gdpa.cpp"]
HEADERS = [HERE / "common.h"]
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]


@cache
def load() -> bool:
    """True once the native ops are registered; False (with one warning) if they cannot be built."""
    if os.environ.get("FXREC_NATIVE", "1") == "0":
        return False
    try:
        from torch.utils import cpp_extension

        if shutil.which("ninja") is None:  # the pip `ninja` package's binary, when its venv is not on PATH
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")

        digest = hashlib.sha256(b"".join(path.read_bytes() for path in SOURCES + HEADERS)).hexdigest()
        cpp_extension.load(
            name=f"fxrec_native_{digest[:12]}",
            sources=[str(path) for path in SOURCES],
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a broken toolchain: fall back, loudly once
        log.warning("fxrec native kernels unavailable, using the PyTorch kernels instead: %s", error)
        return False
    return all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"{library.NATIVE.ns}::{op}", "CPU")
        for op in ("jagged_attention_forward", "jagged_attention_backward", "gdpa_forward", "gdpa_backward")
    )
