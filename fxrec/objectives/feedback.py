"""Delayed feedback: what a model trained at the end of each day learns from conversions still to come.

At the end of day t (the cutoff c) a conversion that will happen tomorrow is not yet known. The
trainer's options (`train.delayed_feedback` in a run config, `mode`):

- `observed` (the default, the loop as it always was): train day t at c on the labels observed so far.
  Fresh, but a conversion after c is a negative forever, so conversions are under-predicted.
- `maturity`: wait until day t's labels have matured: train day t at the end of day t + `wait_days`
  (7: the attribution window has closed, labels are final). Unbiased, but the model is that many days
  stale, and in a world that drifts (new ads, moving interests) staleness costs.
- `corrected`: train day t at c, fresh, with the elapsed-time likelihood of Chapelle's delayed-feedback
  model (DFM): an event that has not converted after e = c − ts seconds is either a true negative or a
  conversion still to come, so P(observed positive) = p · F(e) and P(not yet) = 1 − p · F(e), where F
  is the delay CDF within the window. F comes from a per-advertiser exponential delay model
  (`fxrec.objectives.delays`) fitted on the delays observed before c; an event whose window has closed
  has F = 1 (plain BCE). The model's p is then the probability of converting within the window.

Evaluation always scores the matured labels.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

DAY_S = 86_400
MODES = ("observed", "maturity", "corrected")
_LOG_ONE_MINUS_F_MIN = -30.0  # log(1 − F) at F → 1: e^{-30} ~ 1e-13, below float32 resolution of p


class DelayedFeedback:
    """The `delayed_feedback` block of a train config (see the module docstring).

    `label`: the delayed label corrected (`corrected`); `wait_days`: days a `maturity` model waits;
    `window_days`: the attribution window (past it a conversion is no label); `group`: the column whose
    values have their own delay rate (`corrected`); `prior_events`: pseudo-delays at the global rate
    each group's rate is shrunk with.
    """

    def __init__(
        self,
        mode: Literal["observed", "maturity", "corrected"] = "observed",
        label: str = "conversion",
        wait_days: int = 7,
        window_days: float = 7.0,
        group: str = "advertiser_id",
        prior_events: float = 20.0,
    ):
        if mode not in MODES:
            raise ValueError(f"delayed_feedback mode must be one of {list(MODES)}, got {mode!r}")
        if wait_days < 0 or window_days <= 0 or prior_events < 0:
            raise ValueError("delayed_feedback needs wait_days >= 0, window_days > 0 and prior_events >= 0")
        self.mode = mode
        self.label = label
        self.wait_days = int(wait_days)
        self.window_s = float(window_days) * DAY_S
        self.group = group
        self.prior_events = float(prior_events)

    @property
    def lag_days(self) -> int:
        """How many days after its own the trainer trains a day's events on its (base) labels."""
        return self.wait_days if self.mode == "maturity" else 0


def elapsed_likelihood_loss(
    logits: torch.Tensor, labels: torch.Tensor, observed_share: torch.Tensor
) -> torch.Tensor:
    """(B,) −log-likelihood of the observed label under P(observed positive) = σ(z) · F.

    `observed_share` F (B,) in (0, 1]: the probability that a conversion of the event, if any, has
    happened by the cutoff. F = 1 is plain binary cross-entropy.
    """
    share = observed_share.clamp(min=1e-6, max=1.0)
    positive = F.logsigmoid(logits) + torch.log(share)  # log(p F)
    log_rest = torch.log1p(-share).clamp(min=_LOG_ONE_MINUS_F_MIN)
    negative = F.softplus(logits + log_rest) - F.softplus(logits)  # log(1 − p F)
    return -(labels * positive + (1 - labels) * negative)


def label_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    observed_share: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scalar loss of one task: binary cross-entropy (the mean), or with per-example `weights`
    (0 for an example the task does not train on: the weighted mean over the rest), or the
    elapsed-time likelihood where `observed_share` is given."""
    if weights is None and observed_share is None:
        return F.binary_cross_entropy_with_logits(logits, labels)
    if observed_share is None:
        per_example = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    else:
        per_example = elapsed_likelihood_loss(logits, labels, observed_share)
    if weights is None:
        return per_example.mean()
    return (weights * per_example).sum() / weights.sum().clamp(min=1.0)
