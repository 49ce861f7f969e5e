"""Transfer ratio and the paired test the transfer experiments report.

    transfer ratio = (NE_vm_baseline - NE_vm_with_channel) / (NE_vm_baseline - NE_fm)

on the same evaluation events: the share of the FM's NE advantage over the plain VM that a channel
captures (0: nothing, 1: all of it; it can exceed 1 or go negative).

Over seeds it is the ratio of the mean NEs, not the mean of per-seed ratios: a seed whose baseline
happens to sit close to the FM has a near-zero denominator, and its ratio would swamp the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FM_NOT_BETTER = "FM not better than the VM baseline on test days"


def transfer_ratio(ne_baseline: float, ne_with_channel: float, ne_fm: float) -> float:
    gap = ne_baseline - ne_fm
    if gap <= 0:
        return float("nan")  # the FM is no better than the VM on these events: nothing to transfer
    return (ne_baseline - ne_with_channel) / gap


@dataclass(frozen=True)
class SeedRatio:
    """The transfer ratio over seeds and its 95% seed-bootstrap interval.

    `value` is None, with `reason` saying why, when the FM is no better than the VM baseline (the
    ratio has no meaning then); `low` and `high` are None with fewer than 3 seeds, or when too many
    resamples have the FM no better for the interval to be bounded.
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    reason: str | None = None


def transfer_ratio_over_seeds(
    ne_baseline: np.ndarray, ne_with_channel: np.ndarray, ne_fm: float | np.ndarray, resamples: int = 2000, seed: int = 0
) -> SeedRatio:
    """Ratio of the mean NEs over seeds, with a paired seed bootstrap for its spread.

    ne_baseline, ne_with_channel: (S,) NE of the VM without and with the channel, seed s in both;
    ne_fm: the FM's NE on the same events, a scalar or (S,) (one FM run serves every seed).
    A resample draws S seeds with replacement, the same draws for all three, and recomputes the
    ratio of means; the interval is its 2.5th..97.5th percentile. When the FM is no better in more
    than 2.5% of resamples, one end of that interval is unbounded, so none is given.
    """
    baseline = np.asarray(ne_baseline, dtype=np.float64)
    channel = np.asarray(ne_with_channel, dtype=np.float64)
    fm = np.broadcast_to(np.asarray(ne_fm, dtype=np.float64), baseline.shape)
    if not baseline.shape == channel.shape == fm.shape or baseline.ndim != 1 or len(baseline) == 0:
        raise ValueError(f"need one NE per seed for baseline, channel and FM; got shapes {baseline.shape}, {channel.shape}, {fm.shape}")
    value = transfer_ratio(baseline.mean(), channel.mean(), fm.mean())
    if np.isnan(value):
        return SeedRatio(None, reason=FM_NOT_BETTER)
    if len(baseline) < 3:  # two seeds give three distinct resamples: no interval worth the name
        return SeedRatio(float(value))
    draws = np.random.default_rng(seed).integers(0, len(baseline), size=(resamples, len(baseline)))  # (R, S)
    gaps = baseline[draws].mean(axis=1) - fm[draws].mean(axis=1)  # (R,)
    if np.mean(gaps <= 0) > 0.025:
        return SeedRatio(float(value))
    ratios = (baseline[draws].mean(axis=1) - channel[draws].mean(axis=1)) / gaps
    low, high = np.percentile(ratios, [2.5, 97.5])
    return SeedRatio(float(value), float(low), float(high))


def paired_sign_flip_test(differences: np.ndarray, resamples: int = 20_000, seed: int = 0) -> float:
    """Two-sided p-value that paired differences (e.g. NE per seed x day) have mean zero.

    A sign-flip permutation test: exact in its assumptions (symmetry under the null), no normality,
    and good for the handful of pairs a few seeds give.
    """
    differences = np.asarray(differences, dtype=np.float64)
    differences = differences[np.isfinite(differences)]
    if len(differences) == 0 or np.all(differences == 0):
        return 1.0
    observed = abs(differences.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(resamples, len(differences)))
    means = np.abs((signs * differences).mean(axis=1))
    return float((1 + np.sum(means >= observed - 1e-15)) / (resamples + 1))
