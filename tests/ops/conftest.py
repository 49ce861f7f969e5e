"""Ops test setup: the Triton interpreter switch (shared batches live in ops_fixtures.py)."""

from __future__ import annotations

import os

# Triton decides at import time whether it interprets kernels, and importing torch imports triton when it
# is installed, so the interpreter switch has to be set before the first `import torch` of the process.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402, F401  (imported here, after the switch, so triton sees it)

from fxrec.ops import native  # noqa: E402


@pytest.fixture(params=["native", "flash"])
def cpu_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per cpu-backend kernel: the C++ native kernel and the bucketed flash path that
    runs where no compiler is available."""
    if request.param == "native":
        if not native.load():
            pytest.skip("the native kernels could not be built on this machine")
    else:
        monkeypatch.setattr(native, "load", lambda: False)
    return request.param


@pytest.fixture
def flash_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forces the bucketed flash path (for tests of its planner)."""
    monkeypatch.setattr(native, "load", lambda: False)
