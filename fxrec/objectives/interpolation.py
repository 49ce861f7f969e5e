"""Personalized Interpolation: a conversion probability for any window T from two fixed-window heads.

An ads system trains a few fixed-window conversion heads (say p_s for T_s = 1 day, p_l for T_l = 7
days), but advertisers choose their own window. If an advertiser's delays are exponential with rate β,
p(T) = p_∞ (1 − e^{−βT}), and for any T between the heads

    p_T = p_s + α (p_l − p_s),   α = (e^{−βT_s} − e^{−βT}) / (e^{−βT_s} − e^{−βT_l}),

which is exact in that case (α is the ratio of CDF increments). fxrec clips α to [0, 1], so p_T stays
between the two heads. β is per advertiser (`fxrec.objectives.delays`). The baseline with one global
rate λ and the long head alone is `exponential_window`: p_∞ (1 − e^{−λT}) with p_∞ = p_l / (1 − e^{−λT_l}).

Example::

    p3 = interpolate(p_1d, p_7d, beta, short_s=86_400, long_s=7 * 86_400, window_s=3 * 86_400)
"""

from __future__ import annotations

import numpy as np


def alpha(beta: np.ndarray | float, short_s: float, long_s: float, window_s: float) -> np.ndarray:
    """(N,) α = (e^{−βT_s} − e^{−βT}) / (e^{−βT_s} − e^{−βT_l}), clipped to [0, 1]; at β → 0 the
    linear (T − T_s) / (T_l − T_s)."""
    if not long_s > short_s:
        raise ValueError(f"the long window ({long_s}s) must be longer than the short one ({short_s}s)")
    beta = np.maximum(np.asarray(beta, dtype=np.float64), 1e-15)
    # divided through by e^{−βT_s}: expm1 keeps it exact for small β T
    value = np.expm1(-beta * (window_s - short_s)) / np.expm1(-beta * (long_s - short_s))
    return np.clip(value, 0.0, 1.0)


def interpolate(
    p_short: np.ndarray,
    p_long: np.ndarray,
    beta: np.ndarray | float,
    short_s: float,
    long_s: float,
    window_s: float,
) -> np.ndarray:
    """(N,) p_T = p_s + α (p_l − p_s), between the two heads' predictions."""
    p_short = np.asarray(p_short, dtype=np.float64)
    p_long = np.asarray(p_long, dtype=np.float64)
    out = p_short + alpha(beta, short_s, long_s, window_s) * (p_long - p_short)
    return np.clip(out, np.minimum(p_short, p_long), np.maximum(p_short, p_long))


def exponential_window(
    p_long: np.ndarray, rate: float | np.ndarray, long_s: float, window_s: float
) -> np.ndarray:
    """(N,) p_∞ (1 − e^{−λT}) with p_∞ = p_l / (1 − e^{−λT_l}): the long head scaled by the exponential
    CDF at one rate λ (global, not per advertiser)."""
    rate = np.maximum(np.asarray(rate, dtype=np.float64), 1e-15)
    return np.asarray(p_long, dtype=np.float64) * np.expm1(-rate * window_s) / np.expm1(-rate * long_s)
