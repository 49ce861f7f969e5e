"""Checkpoints that load with `torch.load(weights_only=True)` and are written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights only (fused embedding tables included), detached copies safe to save."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
