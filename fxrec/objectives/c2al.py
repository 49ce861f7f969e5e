"""C2AL (cohort-contrastive auxiliary learning): two masked auxiliary heads for the most divergent cohorts.

One global objective lets the dominant population drown out a minority. C2AL finds the two cohorts a
trained baseline scores most differently and trains two auxiliary heads on the shared encoder, each on
the main label masked to its cohort:

    y_head = y · 1[x ∈ C_head],   y_tail = y · 1[x ∈ C_tail],
    L = L_main + λ_head · BCE(y_head) + λ_tail · BCE(y_tail)

(every event is in both losses: outside the cohort its auxiliary label is 0). The heads exist only for
training: `load_model` drops them (`drop_auxiliary_heads`), so the served model, its outputs and its
latency are the model without C2AL.

Discovery (`discover_pair`): split events along interpretable axes (`fxrec.metrics.cohorts`: user
cohort, surface, advertiser size, activity level, any categorical column), histogram a baseline's
predictions per cohort on shared bins, take the pairwise Jensen–Shannon divergences within each axis
and the most divergent pair (head: the larger cohort, tail: the smaller). Its result is the `c2al:`
block of a model config:

```yaml
fm:
  c2al:
    task: click
    head: {column: user_cohort, values: [0]}
    tail: {column: user_cohort, values: [2]}
    head_weight: 0.5
    tail_weight: 0.5
```

A cohort reads raw columns of the log (integer or float columns, or `surface`), which the trainer
carries beside the features (`EventFrame.meta`); they need not be model features.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fxrec.data.batches import EventFrame
from fxrec.metrics.cohorts import Cohort, Divergences, cohort_divergences

ATTRIBUTE = "_fxrec_c2al"


class CohortAuxiliary:
    """The `c2al:` block of a model config: auxiliary heads on `task` masked to two cohorts.

    `head` / `tail`: cohorts as {column, values} or {column, low, high} (`fxrec.metrics.cohorts.Cohort`,
    as `discover_pair` writes them); `head_weight` / `tail_weight`: their loss weights λ.

    Example::

        c2al = CohortAuxiliary({"column": "user_cohort", "values": [0]}, {"column": "user_cohort", "values": [2]})
        c2al.tasks  # {"click_c2al_head": 0.5, "click_c2al_tail": 0.5}
        frame = c2al.add_labels(frame)
    """

    def __init__(
        self,
        head: dict[str, Any],
        tail: dict[str, Any],
        task: str = "click",
        head_weight: float = 0.5,
        tail_weight: float = 0.5,
    ):
        if head_weight < 0 or tail_weight < 0:
            raise ValueError(f"c2al weights must be >= 0, got head {head_weight}, tail {tail_weight}")
        self.head = head if isinstance(head, Cohort) else Cohort.from_dict(head)
        self.tail = tail if isinstance(tail, Cohort) else Cohort.from_dict(tail)
        for side, cohort in (("head", self.head), ("tail", self.tail)):
            if cohort.values is None and cohort.low is None and cohort.high is None:
                raise ValueError(
                    f"c2al {side} needs `values` or a range (`low`, `high`) of {cohort.column!r}"
                )
        self.task = task
        self.tasks = {f"{task}_c2al_head": float(head_weight), f"{task}_c2al_tail": float(tail_weight)}

    @property
    def columns(self) -> tuple[str, ...]:
        """The raw columns the cohorts read (the frames' `meta`)."""
        return tuple(dict.fromkeys([self.head.column, self.tail.column]))

    def attach(self, model: nn.Module) -> CohortAuxiliary:
        """Record the block on `model` (a plain attribute, not in its state_dict) for the trainer."""
        setattr(model, ATTRIBUTE, self)
        return self

    @staticmethod
    def of(model: nn.Module) -> CohortAuxiliary | None:
        """The C2AL block a model was built with (None without one, or once its heads are dropped)."""
        return getattr(model, ATTRIBUTE, None)

    def masks(self, columns: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(head, tail): (N,) bool, which events are in each cohort."""
        return self.head.mask(columns), self.tail.mask(columns)

    def labels(
        self, label: np.ndarray | torch.Tensor, columns: Mapping[str, np.ndarray]
    ) -> dict[str, torch.Tensor]:
        """{auxiliary task: (N,) y · 1[x ∈ cohort]} from the main label."""
        label = torch.as_tensor(label, dtype=torch.float32)
        head, tail = self.masks(columns)
        names = list(self.tasks)
        return {
            names[0]: label * torch.from_numpy(head).to(label.dtype),
            names[1]: label * torch.from_numpy(tail).to(label.dtype),
        }

    def add_labels(self, frame: EventFrame, columns: Mapping[str, np.ndarray] | None = None) -> EventFrame:
        """`frame` plus the auxiliary labels (and the main label's delay, so that a delayed label stays
        hidden until observed); `columns`: the cohorts' columns, else read from `frame.meta`."""
        if self.task not in frame.labels:
            raise ValueError(
                f"c2al: the task {self.task!r} is not a label of this log ({sorted(frame.labels)})"
            )
        columns = frame_columns(frame, self.columns) if columns is None else columns
        labels = dict(frame.labels) | self.labels(frame.labels[self.task], columns)
        delays = dict(frame.label_delays)
        if self.task in delays:
            delays.update(dict.fromkeys(self.tasks, delays[self.task]))
        return frame.with_labels(labels, delays)

    def to_dict(self) -> dict[str, Any]:
        """The `c2al:` config block."""
        names = list(self.tasks)
        return {
            "task": self.task,
            "head": self.head.to_dict(),
            "tail": self.tail.to_dict(),
            "head_weight": self.tasks[names[0]],
            "tail_weight": self.tasks[names[1]],
        }


def frame_columns(frame: EventFrame, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{column: (N,)} the raw columns of a frame's events (surface as its name, as in the log)."""
    missing = [n for n in names if n not in frame.meta]
    if missing:
        raise ValueError(
            f"c2al: the frame does not carry the cohort columns {missing} (meta: {sorted(frame.meta)})"
        )
    out = {}
    for name in names:
        values = frame.meta[name].numpy()
        out[name] = np.asarray(frame.spec.surfaces)[values] if name == "surface" else values
    return out


def drop_auxiliary_heads(model: nn.Module) -> nn.Module:
    """The model as it is served: C2AL's auxiliary towers (and an MMoE's gates for them) removed from
    its heads and its tasks; a model without C2AL is returned unchanged."""
    c2al = CohortAuxiliary.of(model)
    if c2al is None:
        return model
    heads = model.heads
    for task in c2al.tasks:
        if task in heads.towers:
            del heads.towers[task]
        if heads.gates is not None and task in heads.gates:
            del heads.gates[task]
    heads.tasks = [t for t in heads.tasks if t not in c2al.tasks]
    model.tasks = [t for t in model.tasks if t not in c2al.tasks]
    delattr(model, ATTRIBUTE)
    return model


def served_state(state: dict[str, Any], c2al: CohortAuxiliary | None) -> dict[str, Any]:
    """A trained model's state_dict less the auxiliary heads' weights (what the served model loads)."""
    if c2al is None:
        return state
    prefixes = tuple(f"heads.{part}.{task}." for task in c2al.tasks for part in ("towers", "gates"))
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def discover_pair(
    probs: np.ndarray,
    columns: Mapping[str, np.ndarray],
    axes: list[str],
    task: str = "click",
    head_weight: float = 0.5,
    tail_weight: float = 0.5,
    bins: int = 20,
    min_share: float = 0.01,
) -> tuple[CohortAuxiliary, Divergences]:
    """C2AL's cohorts from a trained baseline's predictions `probs` (N,) on events with raw `columns`:
    the most divergent pair over `axes` (JS of the prediction histograms), the larger as the head.
    Returns the block and every pair's divergence."""
    divergences = cohort_divergences(probs, columns, axes, bins, min_share)
    a, b, _ = divergences.most_divergent()
    if divergences.sizes[a.label] < divergences.sizes[b.label]:
        a, b = b, a
    return CohortAuxiliary(a.to_dict(), b.to_dict(), task, head_weight, tail_weight), divergences
