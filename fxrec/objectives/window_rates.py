"""The delay rates a model with window heads serves any window with, saved beside its weights.

Personalized Interpolation (`fxrec.objectives.interpolation`) needs, per candidate, its advertiser's
delay rate β. fxrec fits them when a model with `windows:` finishes training, from the delays observed
before the model's training cutoff only (the end of the last day it trained through: a conversion at
or after it is not read, exactly as the window heads never read one), with the truncated exponential
MLE of `fxrec.objectives.delays`: the attribution window W is the longest head's, each advertiser's
rate is shrunk toward the global one with `train.delayed_feedback.prior_events` pseudo-delays, and
the grouping column is `train.delayed_feedback.group` (advertiser_id). An advertiser without an
observed delay, or one the log never showed, gets the global rate.

They are written to `models/<m>/delay_rates.json` (`ModelDir.delay_rates_json`)::

    {"group": "advertiser_id", "label": "conversion", "trained_through": "2024-01-03",
     "cutoff_ts": 1704326400, "window_s": 604800.0, "prior_events": 20.0,
     "short": {"task": "conversion_1d", "seconds": 86400.0},
     "long": {"task": "conversion_7d", "seconds": 604800.0},
     "global_rate": 1.9e-05, "rates": {"17": 2.4e-05, ...}, "counts": {"17": 12, ...}}

(rates in 1/s, keyed by the group's id; `counts`: the delays each was fitted on). `fxrec serve` reads
them to answer a request's `window_s` (`fxrec.serving.windows`).

Example::

    rates = fit_window_rates(log, windows, trained_through="2024-01-03")
    rates.save(model_dir.delay_rates_json)
    p_3d = WindowRates.load(path).interpolate(p_1d, p_7d, advertiser_ids, window_s=3 * 86_400)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fxrec.data.eventlog import EventLog
from fxrec.data.labels import delay_column, training_cutoff
from fxrec.objectives.delays import DelayHistory
from fxrec.objectives.interpolation import interpolate
from fxrec.objectives.windows import ConversionWindows

FILE_NAME = "delay_rates.json"


@dataclass
class WindowRates:
    """Per-group delay rates (1/s) fitted at `cutoff_ts`, and the two heads they interpolate between."""

    short_task: str
    short_s: float
    long_task: str
    long_s: float
    global_rate: float
    rates: dict[int, float] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    group: str = "advertiser_id"
    label: str = "conversion"
    trained_through: str | None = None
    cutoff_ts: float | None = None
    window_s: float | None = None
    prior_events: float = 20.0

    def of(self, groups: np.ndarray) -> np.ndarray:
        """(N,) the rate of each event's group; an unknown group (or a negative id, a missing value)
        gets the global rate."""
        groups = np.asarray(groups, dtype=np.int64)
        get = self.rates.get
        return np.fromiter(
            (get(int(g), self.global_rate) for g in groups), dtype=np.float64, count=len(groups)
        )

    def interpolate(
        self, p_short: np.ndarray, p_long: np.ndarray, groups: np.ndarray, window_s: float
    ) -> np.ndarray:
        """(N,) P(conversion within `window_s`): Personalized Interpolation of the two heads with each
        event's group's rate."""
        return interpolate(p_short, p_long, self.of(groups), self.short_s, self.long_s, window_s)

    def to_dict(self) -> dict:
        return {
            "group": self.group,
            "label": self.label,
            "trained_through": self.trained_through,
            "cutoff_ts": self.cutoff_ts,
            "window_s": self.window_s,
            "prior_events": self.prior_events,
            "short": {"task": self.short_task, "seconds": self.short_s},
            "long": {"task": self.long_task, "seconds": self.long_s},
            "global_rate": self.global_rate,
            "rates": {str(g): r for g, r in sorted(self.rates.items())},
            "counts": {str(g): c for g, c in sorted(self.counts.items())},
        }

    @classmethod
    def from_dict(cls, data: dict) -> WindowRates:
        return cls(
            short_task=str(data["short"]["task"]),
            short_s=float(data["short"]["seconds"]),
            long_task=str(data["long"]["task"]),
            long_s=float(data["long"]["seconds"]),
            global_rate=float(data["global_rate"]),
            rates={int(g): float(r) for g, r in data.get("rates", {}).items()},
            counts={int(g): int(c) for g, c in data.get("counts", {}).items()},
            group=str(data.get("group", "advertiser_id")),
            label=str(data.get("label", "conversion")),
            trained_through=data.get("trained_through"),
            cutoff_ts=data.get("cutoff_ts"),
            window_s=data.get("window_s"),
            prior_events=float(data.get("prior_events", 20.0)),
        )

    def save(self, path: Path | str) -> Path:
        """Write the JSON atomically (each writer its own temporary file: ranks may all write it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> WindowRates:
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_window_rates(
    log: EventLog,
    windows: ConversionWindows,
    trained_through: str,
    surfaces: list[str] | None = None,
    group: str = "advertiser_id",
    prior_events: float = 20.0,
) -> WindowRates:
    """The rates of a model with `windows` trained through `trained_through` (on `surfaces`' events,
    None: all): fitted on the delays of `windows.label` observed before that day's training cutoff.

    Only days up to `trained_through` are read, and of their conversions only those with ts + delay
    before the cutoff (`DelayHistory.rates`): nothing the model could not have seen when it trained.
    A log without the `group` column fits one global rate.
    """
    short_task, short_s = windows.short
    long_task, long_s = windows.long
    cutoff = training_cutoff(trained_through)
    delay_name = delay_column(windows.label)
    columns = set(pq.read_schema(log.day_files(log.days[0])[0]).names)
    if delay_name not in columns:
        raise ValueError(
            f"windows: the log has no delay column {delay_name!r} for {windows.label!r}; "
            "delay rates need the conversion delays"
        )
    has_group = group in columns
    wanted = (
        ["ts", windows.label, delay_name] + ([group] if has_group else []) + (["surface"] if surfaces else [])
    )
    history = DelayHistory()
    for day in log.days:
        if day > trained_through:
            break
        table = log.read_day(day, wanted)
        if surfaces:
            table = table.filter(pc.is_in(table.column("surface"), value_set=pa.array(surfaces, pa.string())))
        if table.num_rows == 0:
            continue
        groups = (
            table.column(group).fill_null(-1).to_numpy()
            if has_group
            else np.zeros(table.num_rows, dtype=np.int64)
        )
        history.add(
            table.column("ts").to_numpy(),
            groups,
            table.column(delay_name).fill_null(np.inf).to_numpy(),
            table.column(windows.label).fill_null(0).to_numpy(),
        )
    fitted = history.rates(cutoff, long_s, None, prior_events)
    observed = np.flatnonzero(fitted.counts > 0) if has_group else np.zeros(0, dtype=np.int64)
    return WindowRates(
        short_task=short_task,
        short_s=short_s,
        long_task=long_task,
        long_s=long_s,
        global_rate=float(fitted.global_rate),
        rates={int(g): float(fitted.rates[g]) for g in observed},
        counts={int(g): int(fitted.counts[g]) for g in observed},
        group=group,
        label=windows.label,
        trained_through=trained_through,
        cutoff_ts=float(cutoff),
        window_s=float(long_s),
        prior_events=float(prior_events),
    )
