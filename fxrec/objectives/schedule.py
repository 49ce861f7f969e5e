"""What the progressive trainer trains at the end of each day, under delayed feedback and windowed heads.

At each cutoff c (the end of day t) `LabelSchedule.units` returns the training passes of that day, the
oldest events first: each a frame of some day d ≤ t with its labels as observed at c
(`fxrec.data.labels.observed_labels`), per-task loss weights and the rows to train. A task trains on an
event at exactly one cutoff:

- the model's own tasks (click, conversion, ...) on day d's events at the end of day d + lag, lag being
  0, or `wait_days` for `maturity` (`fxrec.objectives.feedback`); `corrected` adds the observation share
  F(c − ts) of its label (an exponential delay model per `group`, fitted on the delays observed before c);
- a window head (`fxrec.objectives.windows`, T seconds) on an event at the first cutoff with
  ts + T ≤ c, weight 0 before.

C2AL's auxiliary tasks (`fxrec.objectives.c2al`) are base tasks whose labels `prepare` derives from
the main label and the cohorts' columns (carried in `meta`).

With neither option (the defaults) the day is one pass over day t's events as observed at c, exactly
the loop fxrec always ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fxrec.data.batches import EventFrame
from fxrec.data.labels import observed_labels, training_cutoff
from fxrec.objectives.c2al import CohortAuxiliary
from fxrec.objectives.delays import DelayHistory, DelayRates
from fxrec.objectives.feedback import DAY_S, DelayedFeedback
from fxrec.objectives.windows import ConversionWindows


@dataclass
class TrainingUnit:
    """One pass of a day's training: `frame` with its labels as observed at the cutoff (weights and
    observation shares attached where an option sets them), over `rows` (None: every row)."""

    frame: EventFrame
    rows: torch.Tensor | None = None


class LabelSchedule:
    """Which events and labels each training cutoff trains (see the module docstring)."""

    def __init__(
        self,
        tasks: list[str],
        feedback: DelayedFeedback | None = None,
        windows: ConversionWindows | None = None,
        c2al: CohortAuxiliary | None = None,
    ):
        self.feedback = feedback or DelayedFeedback()
        self.windows = windows
        self.c2al = c2al
        window_tasks = windows.tasks if windows is not None else {}
        missing = [t for t in window_tasks if t not in tasks]
        if missing:
            raise ValueError(f"window tasks {missing} are not among the model's tasks {tasks}")
        self.tasks = list(tasks)
        self.base_tasks = [t for t in tasks if t not in window_tasks]
        self.window_tasks = dict(window_tasks)
        if self.feedback.mode == "corrected" and self.feedback.label not in self.base_tasks:
            raise ValueError(
                f"delayed_feedback corrects the label {self.feedback.label!r}, which is not a task of the model "
                f"({self.base_tasks})"
            )
        self.history = DelayHistory() if self.feedback.mode == "corrected" else None
        self.frames: list[EventFrame] = []  # days with a pass still to come
        self.previous_cutoff = -math.inf
        self.last_rates: DelayRates | None = None

    @property
    def plain(self) -> bool:
        """Neither option: one pass over the day's own events, as the loop always trained."""
        return self.feedback.mode == "observed" and not self.window_tasks

    @property
    def meta(self) -> tuple[str, ...]:
        """Columns the frames must carry in `meta` (the delay model's group, C2AL's cohort columns)."""
        group = (self.feedback.group,) if self.feedback.mode == "corrected" else ()
        return tuple(dict.fromkeys(group + (self.c2al.columns if self.c2al is not None else ())))

    def prepare(self, frame: EventFrame) -> EventFrame:
        """A day's frame as the trainer reads it: with the matured window labels the heads are scored on,
        and C2AL's cohort-masked labels."""
        frame = self.windows.add_labels(frame) if self.windows is not None else frame
        return self.c2al.add_labels(frame) if self.c2al is not None else frame

    def units(self, frame: EventFrame, cutoff: int, matured: bool = False) -> list[TrainingUnit]:
        """The passes to train at `cutoff`, the end of `frame`'s day (`frame` from `prepare`). `matured`:
        the oracle's labels (TrainConfig.train_on_matured_labels) instead of the observed ones."""
        if self.plain:
            labels = frame.labels if matured else observed_labels(frame, cutoff)
            return [TrainingUnit(frame if matured else frame.with_labels(labels))]
        feedback = self.feedback
        if self.history is not None:
            label = feedback.label
            self.history.add(
                frame.meta["ts"].numpy(),
                frame.meta[feedback.group].numpy(),
                frame.label_delays[label].numpy(),
                frame.labels[label].numpy(),
            )
        self.frames.append(frame)
        rates = None
        units = []
        for past in self.frames:
            lag_s = feedback.lag_days * DAY_S
            base_due = self.previous_cutoff < training_cutoff(past.day) + lag_s <= cutoff
            ts = past.meta["ts"].to(torch.float64)
            base = torch.full((past.num_rows,), 1.0 if base_due else 0.0)
            weights = dict.fromkeys(self.base_tasks, base)
            for task, seconds in self.window_tasks.items():
                closes = ts + seconds
                weights[task] = ((closes > self.previous_cutoff) & (closes <= cutoff)).to(torch.float32)
            active = torch.stack(list(weights.values())).amax(dim=0) > 0
            if not bool(active.any()):
                continue
            labels = past.labels if matured else observed_labels(past, cutoff)
            observed = {}
            if base_due and self.history is not None and not matured:
                if rates is None:
                    rates = self.history.rates(cutoff, feedback.window_s, None, feedback.prior_events)
                    self.last_rates = rates
                groups = past.meta[feedback.group].numpy()
                share = rates.cdf(groups, cutoff - ts.numpy(), feedback.window_s)
                observed[feedback.label] = torch.from_numpy(share.astype(np.float32))
            rows = None if bool(active.all()) else torch.nonzero(active).squeeze(1)
            units.append(TrainingUnit(past.with_labels(labels).with_label_weights(weights, observed), rows))
        keep = max(feedback.lag_days * DAY_S, max(self.window_tasks.values(), default=0.0))
        self.frames = [f for f in self.frames if training_cutoff(f.day) + keep > cutoff]
        self.previous_cutoff = cutoff
        return units
