"""Conversion-delay rates: how fast each advertiser's conversions arrive, from delays seen before a cutoff.

A model of delays as exponential with rate β (per second): P(delay < T) = 1 − e^{−βT}. At a cutoff c
an event at `ts` can only show a delay below its observation limit L = min(c − ts, W) (W: the
attribution window, past which a conversion is not a label at all). The delays observed before the cutoff
are therefore truncated samples, and the plain MLE (count / sum of delays) would overstate β for fresh
events. fxrec maximizes the truncated likelihood

    ℓ(β) = Σ_i [log β − β d_i − log(1 − e^{−β L_i})]

which is concave in β (so bisection on its derivative finds the maximum), plus, per advertiser, a
Gamma prior of `prior_events` pseudo-delays at the global rate: k (log β − β / β_global). A small
advertiser gets (nearly) the global rate, a large one its own. Only delays with ts + d < c are read.

Example::

    history = DelayHistory()
    history.add(ts, advertiser, delay_s, converted)          # each day's events, as they arrive
    rates = history.rates(cutoff, window_s=7 * 86_400, num_groups=301)
    beta = rates.of(advertiser)                              # (N,) per-event rates, 1/s
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LOW, _HIGH = 1e-12, 1.0  # bracket of rates (1/s): a delay scale between a second and 30,000 years


@dataclass
class DelayRates:
    """Exponential delay rates (1/s): `global_rate` over every group, `rates[g]` per group, from
    `counts[g]` observed delays (a group with none has the global rate)."""

    global_rate: float
    rates: np.ndarray  # (G,) float64
    counts: np.ndarray  # (G,) int64

    def of(self, groups: np.ndarray) -> np.ndarray:
        """(N,) the rate of each event's group; a group beyond the fitted ones gets the global rate."""
        groups = np.asarray(groups, dtype=np.int64)
        known = (groups >= 0) & (groups < len(self.rates))
        return np.where(known, self.rates[np.clip(groups, 0, max(len(self.rates) - 1, 0))], self.global_rate)

    def cdf(self, groups: np.ndarray, elapsed_s: np.ndarray, window_s: float) -> np.ndarray:
        """(N,) P(a conversion of the event has happened within `elapsed_s` | it happens within the
        window): (1 − e^{−β e}) / (1 − e^{−β W}) for e = min(elapsed, W); 1 once the window has closed."""
        beta = self.of(groups)
        elapsed = np.clip(np.asarray(elapsed_s, dtype=np.float64), 0.0, window_s)
        return np.expm1(-beta * elapsed) / np.expm1(-beta * window_s)


def _derivative(beta, n, total, limits, index, num_groups, prior, prior_rate):
    """dℓ/dβ per group (vectorised over groups): (n + k)/β − Σd − k/β_g − Σ L / (e^{βL} − 1)."""
    x = beta[index] * limits
    with np.errstate(over="ignore"):
        tail = np.where(x > 700, 0.0, limits / np.expm1(np.minimum(x, 700)))
    return (n + prior) / beta - total - prior / prior_rate - np.bincount(index, tail, minlength=num_groups)


def truncated_exponential_rate(
    delays: np.ndarray,
    limits: np.ndarray,
    groups: np.ndarray | None = None,
    num_groups: int = 1,
    prior_events: float = 0.0,
    prior_rate: float | np.ndarray = 1.0,
    iterations: int = 80,
) -> np.ndarray:
    """(G,) the rate maximizing the truncated exponential likelihood of each group's delays (each
    observed only because it was below its limit), plus `prior_events` pseudo-delays at `prior_rate`.

    Without a prior and with limits far above the delays this is count / Σ delays. A group with no
    delays and no prior has no information: it gets NaN.
    """
    delays = np.asarray(delays, dtype=np.float64)
    limits = np.asarray(limits, dtype=np.float64)
    index = np.zeros(len(delays), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    n = np.bincount(index, minlength=num_groups).astype(np.float64)
    total = np.bincount(index, delays, minlength=num_groups)
    prior = np.broadcast_to(np.asarray(prior_events, dtype=np.float64), (num_groups,))
    rate = np.broadcast_to(np.asarray(prior_rate, dtype=np.float64), (num_groups,))
    low = np.full(num_groups, np.log(_LOW))
    high = np.full(num_groups, np.log(_HIGH))
    for _ in range(iterations):  # ℓ is concave: its derivative falls with β, bisect on log β
        middle = (low + high) / 2
        rising = _derivative(np.exp(middle), n, total, limits, index, num_groups, prior, rate) > 0
        low = np.where(rising, middle, low)
        high = np.where(rising, high, middle)
    out = np.exp((low + high) / 2)
    return np.where(n + prior > 0, out, np.nan)


def fit_delay_rates(
    delays: np.ndarray,
    limits: np.ndarray,
    groups: np.ndarray,
    num_groups: int,
    prior_events: float = 20.0,
    default_rate: float = 1 / 86_400,
) -> DelayRates:
    """Per-group rates shrunk toward the global one (`prior_events` pseudo-delays each).

    `delays` (N,) observed delays, `limits` (N,) each one's observation limit (it was seen because it
    was below), `groups` (N,) in [0, num_groups) (a negative group, unknown, counts for the global rate
    only). With no delays at all every rate is `default_rate`.
    """
    delays = np.asarray(delays, dtype=np.float64)
    limits = np.asarray(limits, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    if len(delays) == 0:
        return DelayRates(
            default_rate, np.full(num_groups, default_rate), np.zeros(num_groups, dtype=np.int64)
        )
    global_rate = float(truncated_exponential_rate(delays, limits)[0])
    known = (groups >= 0) & (groups < num_groups)
    rates = truncated_exponential_rate(
        delays[known], limits[known], groups[known], num_groups, prior_events, global_rate
    )
    rates = np.where(np.isnan(rates), global_rate, rates)
    return DelayRates(global_rate, rates, np.bincount(groups[known], minlength=num_groups))


def observed_delays(
    ts: np.ndarray, delays: np.ndarray, converted: np.ndarray, cutoff_ts: float, window_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(mask, limits): which events show a conversion delay at `cutoff_ts` (converted and
    ts + delay < cutoff), and each event's observation limit min(cutoff − ts, window)."""
    ts = np.asarray(ts, dtype=np.float64)
    limits = np.minimum(cutoff_ts - ts, window_s)
    delays = np.nan_to_num(np.asarray(delays, dtype=np.float64), nan=np.inf)
    mask = (np.asarray(converted) > 0) & (delays < limits)
    return mask, limits


class DelayHistory:
    """The delays of every event seen so far, to fit rates at any later cutoff from what was observed
    by then (a conversion after the cutoff is not read)."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(self, ts: np.ndarray, groups: np.ndarray, delays: np.ndarray, converted: np.ndarray) -> None:
        """One batch of events: their ts, group (advertiser), delay in seconds (any value where not
        converted) and whether they convert within the window (their matured label)."""
        converted = np.asarray(converted) > 0
        keep = np.flatnonzero(converted)  # only conversions can ever show a delay
        self._parts.append(
            (
                np.asarray(ts, dtype=np.float64)[keep],
                np.asarray(groups, dtype=np.int64)[keep],
                np.asarray(delays, dtype=np.float64)[keep],
            )
        )

    def rates(
        self, cutoff_ts: float, window_s: float, num_groups: int | None = None, prior_events: float = 20.0
    ) -> DelayRates:
        """Rates from the delays observed before `cutoff_ts` (fit_delay_rates); `num_groups` None:
        up to the largest group seen (a later group reads the global rate, `DelayRates.of`)."""
        if not self._parts:
            return fit_delay_rates(np.zeros(0), np.zeros(0), np.zeros(0), num_groups or 1, prior_events)
        ts, groups, delays = (np.concatenate(column) for column in zip(*self._parts, strict=True))
        if len(self._parts) > 1:
            self._parts = [(ts, groups, delays)]  # one array each from now on
        if num_groups is None:
            num_groups = int(groups.max()) + 1 if len(groups) else 1
        mask, limits = observed_delays(ts, delays, np.ones(len(ts)), cutoff_ts, window_s)
        return fit_delay_rates(delays[mask], limits[mask], groups[mask], num_groups, prior_events)
