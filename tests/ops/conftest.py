"""Ops test setup: the Triton interpreter switch (shared batches live in ops_fixtures.py)."""

from __future__ import annotations

import os

# Triton decides at import time whether it interprets kernels, and importing torch imports triton when it
# is installed, so the interpreter switch has to be set before the first `import torch` of the process.
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402, F401  (imported here, after the switch, so triton sees it)
