"""Transfer ratio and the paired test the transfer experiments report.

    transfer ratio = (NE_vm_baseline - NE_vm_with_channel) / (NE_vm_baseline - NE_fm)

on the same evaluation events: the share of the FM's NE advantage over the plain VM that a channel
captures (0: nothing, 1: all of it; it can exceed 1 or go negative).
"""

from __future__ import annotations

import numpy as np


def transfer_ratio(ne_baseline: float, ne_with_channel: float, ne_fm: float) -> float:
    gap = ne_baseline - ne_fm
    if gap <= 0:
        return float("nan")  # the FM is no better than the VM on these events: nothing to transfer
    return (ne_baseline - ne_with_channel) / gap


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
