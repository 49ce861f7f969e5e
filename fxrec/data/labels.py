"""Labels as an ads system observes them: a delayed label counts only once it has happened.

A conversion is logged `conversion_delay_s` seconds after its impression (any label `<task>` may
have such a `<task>_delay_s` column; labels without one, like `click`, are known at the event's
`ts`). A model trained at time `cutoff_ts` has seen an event's positive label only if
`ts + delay < cutoff_ts`; a later conversion is, at that time, an unconverted example. Training
reads its labels through `observed_labels` only; evaluation reads the matured (final) labels that
`EventFrame.labels` holds, as the rule in DESIGN.md says.

The progressive trainer trains day t's events at the end of day t, so its cutoff is
`training_cutoff(day)`: 00:00 UTC of day t+1. Conversions of day t's events that arrive later are
never learned by this loop (it does not revisit a day); delayed-feedback objectives correct for that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fxrec.data.eventlog import day_start_ts
from fxrec.data.schema import DatasetSpec

if TYPE_CHECKING:
    from fxrec.data.batches import EventFrame

DELAY_SUFFIX = "_delay_s"
DAY_S = 86_400


def delay_column(label: str) -> str:
    """The column holding seconds from an event's ts to its positive `label` (e.g. conversion_delay_s)."""
    return f"{label}{DELAY_SUFFIX}"


def delay_columns(spec: DatasetSpec) -> list[str]:
    """Delay columns a reader may need: of every task and of the history label (absent ones are skipped)."""
    return list(dict.fromkeys(delay_column(label) for label in (*spec.tasks, spec.history_label)))


def training_cutoff(day: str) -> int:
    """When a model trained on `day`'s events is trained: the end of that UTC day (unix seconds)."""
    return day_start_ts(day) + DAY_S


def observed_labels(frame: EventFrame, cutoff_ts: int) -> dict[str, torch.Tensor]:
    """{task: (N,) float32} each event's label as known at `cutoff_ts`.

    A delayed positive (`frame.label_delays[task]`) counts where `ts + delay < cutoff_ts` and is 0
    otherwise; immediate labels are returned unchanged. Every event must lie before the cutoff: a
    model cannot be trained on an event that has not happened yet.
    """
    ts = frame.meta["ts"]
    if len(ts) and int(ts.max()) >= cutoff_ts:
        raise ValueError(
            f"training cutoff {cutoff_ts} is not after every event (latest ts {int(ts.max())}): "
            "labels can only be observed for events before the cutoff"
        )
    labels = dict(frame.labels)
    for task, delay in frame.label_delays.items():
        known = ts.to(torch.float64) + delay < cutoff_ts  # (N,) bool; delay is float64 seconds
        labels[task] = torch.where(known, labels[task], torch.zeros_like(labels[task]))
    return labels


def observed_frame(frame: EventFrame, cutoff_ts: int) -> EventFrame:
    """`frame` with its labels as observed at `cutoff_ts`: the frame a training step reads."""
    return frame.with_labels(observed_labels(frame, cutoff_ts))
