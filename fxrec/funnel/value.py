"""The final stage's value formula: what one impression of an ad is worth to fxrec's ads system.

    value = bid x pCTR x pCVR - hide_penalty x pHide

- `bid`: the advertiser's bid per conversion (the candidate log's `bid` column);
- `p_click`: P(click | impression);
- `p_conversion`: P(conversion | click), the post-click rate (the simulator's `oracle_p_conversion`);
  a model whose conversion head predicts P(conversion | impression) (the VMs trained on the impression
  log: pCTCVR) gives its post-click rate as pCTCVR / pCTR (`fxrec.funnel.final_stage` does this);
- `p_hide`: P(hide | impression), the negative quality event (`quality_events` in the simulator);
- `hide_penalty`: what one hide costs, in the bid's units. The default, `HIDE_PENALTY` = 0.1, makes the
  penalty of a typical simulated candidate (pHide ~ 2%) about a quarter of its expected revenue
  (bid x pCTR x pCVR ~ 0.01): enough to reorder the top of a request, not enough to dominate it.

This module is the one place the formula lives: the final stage's value (`final_stage`), the
early-stage ranker's score (`esr.EarlyStageRanker.score`) and the funnel's reports all call `value`,
so a stage that ranks by its own heads ranks exactly as the formula would with its probabilities.
Values can be negative (an annoying ad worth little); `soft_recall` says how it treats them.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

HIDE_PENALTY = 0.1

Array = TypeVar("Array", np.ndarray, torch.Tensor, float)


def value(
    bid: Array,
    p_click: Array,
    p_conversion: Array,
    p_hide: Array | float = 0.0,
    hide_penalty: float = HIDE_PENALTY,
) -> Array:
    """bid x p_click x p_conversion - hide_penalty x p_hide, elementwise (numpy arrays, torch tensors
    or floats alike, broadcasting as their library does)."""
    return bid * p_click * p_conversion - hide_penalty * p_hide


def post_click_conversion(p_click: Array, p_click_conversion: Array, eps: float = 1e-7) -> Array:
    """P(conversion | click) from a model's P(click) and P(click and conversion | impression), clipped to
    [0, 1]: pCTCVR / pCTR, so that bid x pCTR x pCVR = bid x pCTCVR wherever pCTCVR <= pCTR."""
    if isinstance(p_click, torch.Tensor):
        return (p_click_conversion / p_click.clamp_min(eps)).clamp(0.0, 1.0)
    return np.clip(np.asarray(p_click_conversion) / np.maximum(np.asarray(p_click), eps), 0.0, 1.0)
