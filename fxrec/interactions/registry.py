"""Interaction modules by name, as model configs refer to them."""

from __future__ import annotations

from typing import Any

from fxrec.interactions.attention_fm import AttentionFM
from fxrec.interactions.base import Interaction
from fxrec.interactions.dcnv2 import DCNv2
from fxrec.interactions.dhen import DHEN
from fxrec.interactions.dot import DOT
from fxrec.interactions.interformer import InterFormer
from fxrec.interactions.kunlun import Kunlun

INTERACTIONS: dict[str, type[Interaction]] = {
    "dcnv2": DCNv2,
    "dot": DOT,
    "dhen": DHEN,
    "interformer": InterFormer,
    "kunlun": Kunlun,
    "attention_fm": AttentionFM,
}


def build_interaction(name: str, num_tokens: int, dim: int, **kwargs: Any) -> Interaction:
    if name not in INTERACTIONS:
        raise ValueError(f"unknown interaction {name!r}; known: {sorted(INTERACTIONS)}")
    return INTERACTIONS[name](num_tokens=num_tokens, dim=dim, **kwargs)
