"""Checkpoints that load with `torch.load(weights_only=True)` and are written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torchrec.tensor_types import UInt2Tensor, UInt4Tensor

# TorchRec's packed int4 / int2 rows (a quantized model's tables, `fxrec quantize`): plain uint8 bytes in a
# wrapper that weights-only loading must be told about.
_PACKED = [UInt4Tensor, UInt2Tensor]


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    with torch.serialization.safe_globals(_PACKED):
        return torch.load(path, map_location="cpu", weights_only=True)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights only (fused embedding tables included), detached copies safe to save."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
