"""One dispatch point for every fxrec op: declare once, implement per backend.

Each op is a name; each backend registers an implementation for it as a lazy `module:function` path so
that importing fxrec never imports Triton (it is optional on CPU machines).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from enum import StrEnum

import torch


class Backend(StrEnum):
    """Which implementation runs an op.

    reference: plain PyTorch, obviously right, slow; the ground truth in tests.
    cpu:       the fast path for CPUs (length buckets + PyTorch's tiled flash kernel, hand-written backward).
    triton:    offsets-driven Triton kernels for GPUs (CPU only under TRITON_INTERPRET=1, for tests).
    auto:      cpu for CPU tensors, triton for CUDA tensors.
    """

    AUTO = "auto"
    REFERENCE = "reference"
    CPU = "cpu"
    TRITON = "triton"


_REGISTRY: dict[str, dict[Backend, str]] = {
    "jagged_self_attention": {
        Backend.REFERENCE: "fxrec.ops.jagged_attention.reference:self_attention",
        Backend.CPU: "fxrec.ops.jagged_attention.cpu:self_attention",
        Backend.TRITON: "fxrec.ops.jagged_attention.triton:self_attention",
    },
    "jagged_dense_attention": {
        Backend.REFERENCE: "fxrec.ops.jagged_attention.reference:dense_attention",
        Backend.CPU: "fxrec.ops.jagged_attention.cpu:dense_attention",
        Backend.TRITON: "fxrec.ops.jagged_attention.triton:dense_attention",
    },
    "gdpa": {
        Backend.REFERENCE: "fxrec.ops.gdpa_kernels.reference:gdpa",
        Backend.CPU: "fxrec.ops.gdpa_kernels.cpu:gdpa",
        Backend.TRITON: "fxrec.ops.gdpa_kernels.triton:gdpa",
    },
}


def resolve_backend(backend: Backend | str, device: torch.device) -> Backend:
    """Turn a user's backend choice into a concrete backend for tensors on `device`."""
    try:
        chosen = Backend(backend)
    except ValueError:
        raise ValueError(f"unknown backend {backend!r}; expected one of {[b.value for b in Backend]}") from None
    if chosen is Backend.AUTO:
        return Backend.TRITON if device.type == "cuda" else Backend.CPU
    return chosen


def implementation(op: str, backend: Backend | str, device: torch.device) -> Callable:
    """The function implementing `op` on `backend` (resolved for `device`), imported on first use."""
    chosen = resolve_backend(backend, device)
    path = _REGISTRY[op][chosen]
    module_name, function_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:  # triton missing: say what to install rather than a bare ImportError
        raise ImportError(f"backend {chosen.value!r} for {op} needs an extra package: {error}") from error
    return getattr(module, function_name)
