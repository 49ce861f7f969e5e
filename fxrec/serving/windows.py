"""A request's `window_s`: the conversion probability at the advertiser's own window.

A VM trained with `windows:` (say `conversion_1d` and `conversion_7d` heads) can answer any window
between its shortest and longest head: each candidate's p_T = p_s + α(p_l − p_s) with its advertiser's
delay rate β (Personalized Interpolation, `fxrec.objectives.interpolation`). The rates are the ones
training saved beside the weights (`models/<m>/delay_rates.json`, `fxrec.objectives.window_rates`),
fitted on the delays observed before the model's training cutoff; a candidate's advertiser is its
`advertiser_id` as the request's rows carry it (from the catalog, or the candidate's `features`), and
an advertiser the rates do not know gets the global rate.

A `window_s` outside [shortest, longest] head, or sent to a VM without window heads, is a 422 that
names what the model serves.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from fxrec.objectives.window_rates import WindowRates, fit_window_rates
from fxrec.objectives.windows import ConversionWindows
from fxrec.run import LoadedModel, Run, RunError
from fxrec.serving.validation import RequestError

log = logging.getLogger(__name__)


def _days(seconds: float) -> str:
    days = seconds / 86_400
    return f"{days:g}d" if days >= 1 else f"{seconds / 3600:g}h"


class ServedWindows:
    """The window heads and delay rates of one served VM (`rates` None: it has no window heads)."""

    def __init__(self, name: str, rates: WindowRates | None):
        self.name = name
        self.rates = rates

    @classmethod
    def load(cls, run: Run, vm: LoadedModel) -> ServedWindows:
        """The VM's saved rates; a VM with window heads but no `delay_rates.json` (trained before
        fxrec saved them) gets them fitted now, the same way, at its training cutoff."""
        windows = ConversionWindows.of(vm.model)
        if windows is None:
            return cls(vm.name, None)
        path = run.model(vm.name).delay_rates_json
        if path.exists():
            rates = WindowRates.load(path)
        else:
            if vm.version is None:
                raise RunError(
                    f"model {vm.name!r} has window heads but no training day to fit delay rates at"
                )
            log.warning("%s: no %s; fitting the delay rates at its cutoff now", vm.name, path.name)
            feedback = run.config.train.delayed_feedback
            rates = fit_window_rates(
                run.event_log(),
                windows,
                vm.version,
                vm.config.surfaces,
                feedback.group,
                feedback.prior_events,
            )
        if (rates.short_task, rates.long_task) != (windows.short[0], windows.long[0]):
            raise RunError(
                f"{path}: rates for the heads {rates.short_task}..{rates.long_task}, but model {vm.name!r} "
                f"has {windows.short[0]}..{windows.long[0]}; train the model again"
            )
        return cls(vm.name, rates)

    def check(self, window_s: float) -> None:
        """A 422 unless the model serves `window_s`."""
        if self.rates is None:
            raise RequestError(
                422,
                f"window_s: model {self.name!r} has no conversion window heads (`windows:` in its config), "
                "so it cannot score a window; leave window_s out or serve a model trained with windows",
            )
        low, high = self.rates.short_s, self.rates.long_s
        if not low <= window_s <= high:
            raise RequestError(
                422,
                f"window_s: {window_s:g} is outside the windows model {self.name!r} serves: "
                f"{low:g}..{high:g} seconds ({_days(low)}..{_days(high)}, its heads "
                f"{self.rates.short_task} and {self.rates.long_task})",
            )

    def groups(self, table: pa.Table) -> np.ndarray:
        """(n,) each candidate row's group id (advertiser); -1 where unknown."""
        assert self.rates is not None
        if self.rates.group not in table.column_names:
            return np.full(table.num_rows, -1, dtype=np.int64)
        return table.column(self.rates.group).fill_null(-1).to_numpy().astype(np.int64)

    def probabilities(
        self, probabilities: dict[str, np.ndarray], table: pa.Table, window_s: float
    ) -> np.ndarray:
        """(n,) P(conversion within `window_s`) per candidate, from the model's two heads."""
        assert self.rates is not None
        rates = self.rates
        return rates.interpolate(
            probabilities[rates.short_task], probabilities[rates.long_task], self.groups(table), window_s
        )
