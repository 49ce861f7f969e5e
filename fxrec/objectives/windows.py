"""Fixed-window conversion heads: one head per window T, trained only where T has passed.

A model config's `windows: {label: conversion, days: [1, 7]}` adds a head per window to the model's
tasks (`conversion_1d`, `conversion_7d`). The label of `conversion_Td` is "converted within T of the
impression": the delayed label `conversion` with its delay below T. At a training cutoff c an event's
T-window label is final only if ts + T ≤ c, so the progressive trainer trains that head on an event
once, at the first cutoff after its window closed (the day T after the event's, for whole days), and
never on an event whose window is still open: no training label reads a conversion after its cutoff.
Evaluation scores each head on the matured window labels. Personalized Interpolation
(`fxrec.objectives.interpolation`) serves any window between the shortest and longest head.
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.data.batches import EventFrame

DAY_S = 86_400
ATTRIBUTE = "_fxrec_conversion_windows"


def window_task(label: str, days: float) -> str:
    """The task name of `label` within `days`: conversion_1d, conversion_7d, conversion_12h."""
    if float(days).is_integer():
        return f"{label}_{int(days)}d"
    hours = days * 24
    if not float(hours).is_integer():
        raise ValueError(f"a window is a whole number of hours; got {days} days")
    return f"{label}_{int(hours)}h"


class ConversionWindows:
    """Heads for `label` within each of `days` (the `windows:` block of a model config).

    Example::

        windows = ConversionWindows("conversion", [1, 7])
        windows.tasks  # {"conversion_1d": 86400.0, "conversion_7d": 604800.0}
        frame = windows.add_labels(frame)  # matured window labels beside the frame's own
    """

    def __init__(self, label: str = "conversion", days: list[float] | None = None):
        days = [1.0, 7.0] if days is None else [float(d) for d in days]
        if not days or any(d <= 0 for d in days) or len(set(days)) != len(days):
            raise ValueError(f"windows needs distinct positive days, got {days}")
        self.label = label
        self.days = sorted(days)
        self.tasks = {window_task(label, d): d * DAY_S for d in self.days}

    @property
    def short(self) -> tuple[str, float]:
        """(task, seconds) of the shortest window."""
        return next(iter(self.tasks.items()))

    @property
    def long(self) -> tuple[str, float]:
        """(task, seconds) of the longest window."""
        return list(self.tasks.items())[-1]

    def attach(self, model: nn.Module) -> ConversionWindows:
        """Record the windows on `model` (a plain attribute, not in its state_dict) for the trainer."""
        setattr(model, ATTRIBUTE, self)
        return self

    @staticmethod
    def of(model: nn.Module) -> ConversionWindows | None:
        """The windows a model was built with, or None."""
        return getattr(model, ATTRIBUTE, None)

    def add_labels(self, frame: EventFrame) -> EventFrame:
        """`frame` plus each window's matured label (label and delay < T) and its delay, so that
        `observed_labels` hides a window positive until it has happened, as the label's own."""
        if self.label not in frame.label_delays:
            raise ValueError(
                f"windows: {self.label!r} has no delay column ({self.label}_delay_s) in this log; "
                f"windowed heads need a delayed label (known: {sorted(frame.label_delays)})"
            )
        label, delay = frame.labels[self.label], frame.label_delays[self.label]
        labels = dict(frame.labels)
        delays = dict(frame.label_delays)
        for task, seconds in self.tasks.items():
            labels[task] = torch.where(delay < seconds, label, torch.zeros_like(label))
            delays[task] = delay
        return frame.with_labels(labels, delays)
