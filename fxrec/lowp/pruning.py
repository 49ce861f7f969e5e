"""Magnitude pruning of a model's dense Linears while it trains over the stream: one-shot, or D2S.

A model config's `prune:` block switches it on (absent or null: no pruning, the model is unchanged):

    prune: {sparsity: 0.8, schedule: d2s, start_day: 1, ramp_days: 3, refresh_days: 1, scope: layer}

- `sparsity` — the fraction of each pruned weight matrix set to zero once the schedule reaches its
  target (0 <= sparsity < 1).
- `schedule` —
  - `oneshot`: dense training for `start_day` days, then one magnitude prune to `sparsity`; the mask is
    fixed from then on and the pruned weights stay exactly zero (their gradients are masked, and the
    mask is applied again after every optimizer step, so Adam's momentum cannot revive them).
  - `d2s` (adaptive dense-to-sparse, Ye et al. 2020, arXiv 2010.08655): the full dense model keeps
    training and is pruned again every `refresh_days` days; the sparse model (dense weights x mask) is
    the one that predicts and is served. One model holds both: the forward uses the masked weights and
    the backward passes the gradient to every dense weight unmasked (straight-through), so a pruned
    weight keeps learning from the stream and comes back at the next refresh if the data drifted
    toward it. Sparsity ramps from 0 to `sparsity` over `ramp_days` refreshes by the gradual schedule
    s(k) = sparsity * (1 - (1 - min(1, (k + 1) / ramp_days))^3), k = days since `start_day` (the
    paper's own schedule equations are not public; this is the cubic schedule of Zhu & Gupta 2017,
    its first step taken on the first pruning day rather than at sparsity 0). Every mask computed on
    a refresh has exactly the schedule's sparsity of that day.
- `start_day` — the days of dense training before the first prune (0: prune the initial weights).
- `ramp_days`, `refresh_days` — d2s only: the ramp's length in days, and the days between two masks.
- `scope` — `layer`: every pruned Linear loses exactly round(sparsity x its weights), the smallest
  |w|; `global`: round(sparsity x all pruned weights) are chosen together by |w| / RMS of its layer
  (each layer's sparsity comes out of the ranking, as the paper's; scaling by the layer's RMS keeps
  wide layers, initialized with smaller weights, from being emptied first).

What is pruned: the weight of every nn.Linear but the heads' output layers (the Linears that give each
task's logit, `TaskHeads.output_layers()`, a channel's heads too); not embeddings, biases, TokenLinears
or modules a transfer channel trains with its own optimizer. The mask of each is a bool buffer of a
`torch.nn.utils.parametrize` parametrization, `<layer>.parametrizations.weight.0.mask`, next to
the dense weights (`...parametrizations.weight.original`): a state_dict saves and restores both, and
`<layer>.weight` is always the masked, served weight.

The trainer (`fxrec.train.trainer.Trainer`) finds the model's `Pruner` with `Pruner.of(model)` and calls
`begin_day(days_trained)` before training each day (after that day's predictions are written: a new
mask is fine-tuned for a day before it predicts), and `after_step()` after each dense optimizer step.
Holdout training (`fxrec.train.holdout`, epochs over a split, no days) runs `after_step()` through
`Trainer.train_step` but no day boundary: there the caller prunes (`begin_day` / `prune_to`) itself.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from fxrec.lowp.mods import _children, _own_parameters
from fxrec.models.heads import TaskHeads
from fxrec.nn.block_norm import BlockNormLinear

ATTRIBUTE = "pruner"  # the model attribute that holds its Pruner


class _StraightThrough(torch.autograd.Function):
    """weight * mask forward; the gradient passes to every weight, masked or not."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class WeightMask(nn.Module):
    """The parametrization weight -> weight * mask; `straight_through` (d2s) leaves the gradient unmasked."""

    def __init__(self, shape: torch.Size, straight_through: bool):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool))
        self.straight_through = straight_through

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.straight_through:
            return _StraightThrough.apply(weight, self.mask)
        return weight * self.mask


class Pruner:
    """Prunes a model's dense Linears by magnitude on a schedule: see the module doc. Each argument is a
    key of `prune:`.

    Example::

        pruner = Pruner(sparsity=0.8, schedule="d2s", ramp_days=3).attach(model)
        pruner.begin_day(days_trained)  # before each training day: a new mask when the schedule says
        pruner.after_step()  # after each optimizer step
        pruner.sparsity()  # the fraction of pruned weights now
    """

    def __init__(
        self,
        sparsity: float = 0.8,
        schedule: Literal["d2s", "oneshot"] = "d2s",
        start_day: int = 1,
        ramp_days: int = 3,
        refresh_days: int = 1,
        scope: Literal["layer", "global"] = "layer",
    ):
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"prune: sparsity is a fraction 0 <= sparsity < 1, got {sparsity}")
        if schedule not in ("d2s", "oneshot"):
            raise ValueError(f"prune: schedule is d2s or oneshot, got {schedule!r}")
        if scope not in ("layer", "global"):
            raise ValueError(f"prune: scope is layer or global, got {scope!r}")
        for key, value, least in (
            ("start_day", start_day, 0),
            ("ramp_days", ramp_days, 1),
            ("refresh_days", refresh_days, 1),
        ):
            if value < least:
                raise ValueError(f"prune: {key} is a number of days >= {least}, got {value}")
        self.target = sparsity
        self.schedule = schedule
        self.start_day = start_day
        self.ramp_days = ramp_days
        self.refresh_days = refresh_days
        self.scope = scope
        self.layers: dict[str, nn.Linear] = {}  # dotted path -> the parametrized Linear

    # -- building ---------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> Pruner:
        """Put a mask (all ones: nothing pruned yet) on every prunable Linear of `model` and keep this
        pruner on it (`Pruner.of(model)`). Draws no random numbers and leaves the forward as it was."""
        outputs = {
            id(layer)
            for heads in model.modules()
            if isinstance(heads, TaskHeads)
            for layer in heads.output_layers().values()
        }
        seen: set[int] = set()
        for _, _, path, child in list(_children(model, _own_parameters(model))):
            if not isinstance(child, nn.Linear) or id(child) in outputs or id(child) in seen:
                continue
            seen.add(id(child))
            parametrize.register_parametrization(
                child, "weight", WeightMask(child.weight.shape, self.schedule == "d2s")
            )
            self.layers[path] = child
        setattr(model, ATTRIBUTE, self)  # a plain attribute: not a submodule, not in state_dict
        return self

    @staticmethod
    def of(model: nn.Module) -> Pruner | None:
        """The Pruner attached to `model`, or None (a config without `prune:`)."""
        return getattr(model, ATTRIBUTE, None)

    @staticmethod
    def fold(model: nn.Module) -> nn.Module:
        """The model as served, in place: every mask folded into its Linear's plain weight (zeros where
        pruned) and the pruner gone, so dense kernels, quantization and dispatch see plain Linears."""
        pruner = Pruner.of(model)
        if pruner is None:
            return model
        # New plain Linears rather than `remove_parametrizations`: that edits the parametrized class,
        # which a deep copy of the model shares with the original.
        for path, layer in pruner.layers.items():
            plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            plain.weight = nn.Parameter(layer.weight.detach().clone())
            if layer.bias is not None:
                plain.bias = layer.bias
            norm = getattr(layer, "norm", None)  # a BlockNormLinear keeps its norm
            if norm is not None:
                plain = BlockNormLinear(plain, norm.block, norm.eps)
            parent, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, name, plain)
        delattr(model, ATTRIBUTE)
        return model

    # -- the schedule -----------------------------------------------------------------------
    def sparsity_at(self, days_trained: int) -> float | None:
        """The sparsity of the mask computed before training day `days_trained` (0-based), or None
        when that day keeps the mask it has."""
        k = days_trained - self.start_day
        if k < 0:
            return None
        if self.schedule == "oneshot":
            return self.target if k == 0 else None
        if k % self.refresh_days:
            return None
        progress = min(1.0, (k + 1) / self.ramp_days)
        return self.target * (1.0 - (1.0 - progress) ** 3)

    # -- the trainer's hooks ----------------------------------------------------------------
    def begin_day(self, days_trained: int) -> float | None:
        """Before training day `days_trained`: prune (oneshot) or refresh the mask (d2s) when the schedule
        says; returns the new mask's sparsity, or None when the mask stays."""
        sparsity = self.sparsity_at(days_trained)
        if sparsity is not None:
            self.prune_to(sparsity)
        return sparsity

    @torch.no_grad()
    def after_step(self) -> None:
        """oneshot: zero the pruned weights again (the optimizer's momentum moves them otherwise). d2s
        keeps its dense weights: they are the dense model the next mask is chosen from."""
        if self.schedule != "oneshot":
            return
        for layer in self.layers.values():
            original = layer.parametrizations.weight.original
            original.mul_(_mask(layer))

    # -- masks ------------------------------------------------------------------------------
    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """New masks from the current dense weights: exactly round(sparsity x n) of the n weights of each
        layer (scope layer) or of all layers together (scope global) pruned, the smallest scores first.
        A weight pruned before is chosen again by its score now, so it can come back."""
        weights = {path: layer.parametrizations.weight.original for path, layer in self.layers.items()}
        if self.scope == "layer":
            for path, weight in weights.items():
                _mask(self.layers[path]).copy_(
                    _keep_largest(weight.abs().flatten(), sparsity).view_as(weight)
                )
        else:
            scores = [
                (w.abs() / w.square().mean().sqrt().clamp_min(1e-12)).flatten() for w in weights.values()
            ]
            kept = _keep_largest(torch.cat(scores), sparsity) if scores else torch.zeros(0, dtype=torch.bool)
            for (path, weight), part in zip(
                weights.items(), kept.split([s.numel() for s in scores]), strict=True
            ):
                _mask(self.layers[path]).copy_(part.view_as(weight))
        if self.schedule == "oneshot":
            self.after_step()  # the pruned weights are zero from now on

    def masks(self) -> dict[str, torch.Tensor]:
        """{layer path: its bool mask (True: kept)}."""
        return {path: _mask(layer) for path, layer in self.layers.items()}

    def sparsity(self) -> float:
        """The fraction of the prunable weights that are pruned now."""
        masks = list(self.masks().values())
        total = sum(m.numel() for m in masks)
        return 1.0 - sum(int(m.sum()) for m in masks) / total if total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        return {path: 1.0 - int(m.sum()) / m.numel() for path, m in self.masks().items()}


def _mask(layer: nn.Linear) -> torch.Tensor:
    return layer.parametrizations.weight[0].mask


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A bool vector, False at exactly round(sparsity x n) entries of the smallest scores (ties by index)."""
    pruned = round(sparsity * scores.numel())
    keep = torch.ones_like(scores, dtype=torch.bool)
    if pruned:
        keep[torch.argsort(scores, stable=True)[:pruned]] = False
    return keep
