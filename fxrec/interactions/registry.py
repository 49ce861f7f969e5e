"""Interaction modules by name, as model configs refer to them."""

from __future__ import annotations

from typing import Any

from fxrec.interactions.base import Interaction
from fxrec.interactions.dcnv2 import DCNv2

INTERACTIONS: dict[str, type[Interaction]] = {
    "dcnv2": DCNv2,
}


def build_interaction(name: str, num_tokens: int, dim: int, **kwargs: Any) -> Interaction:
    if name not in INTERACTIONS:
        raise ValueError(f"unknown interaction {name!r}; known: {sorted(INTERACTIONS)}")
    return INTERACTIONS[name](num_tokens=num_tokens, dim=dim, **kwargs)
