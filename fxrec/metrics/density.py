"""How dense a weight matrix is: the Gini coefficient of its magnitudes and their histogram.

Gini 0: every entry has the same magnitude (dense); toward 1: a few entries carry all of it (sparse,
light-tailed elsewhere). C2AL's analysis reads the attention FM's compression matrix Y this way
(`fxrec.interactions.attention_fm`): under a global objective Y is sparse, with C2AL denser.
"""

from __future__ import annotations

import numpy as np


def gini(values: np.ndarray) -> float:
    """Gini coefficient of |values|: Σ_i (2i − n − 1) x_(i) / (n Σ x), x sorted ascending (0 for all zeros)."""
    x = np.sort(np.abs(np.asarray(values, dtype=np.float64)).ravel())
    n = len(x)
    total = x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * x) / (n * total))


def magnitude_histogram(values: np.ndarray, bins: int = 20) -> dict[str, list[float]]:
    """Histogram of |values| / max |values| on [0, 1]: {edges, counts, shares}."""
    x = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    top = x.max() if len(x) else 0.0
    scaled = x / top if top > 0 else x
    counts, edges = np.histogram(scaled, bins=bins, range=(0.0, 1.0))
    return {
        "edges": edges.tolist(),
        "counts": counts.astype(int).tolist(),
        "shares": (counts / max(len(x), 1)).tolist(),
    }


def density_report(values: np.ndarray, bins: int = 20) -> dict:
    """Gini, the share of entries above 10% of the largest magnitude, and the magnitude histogram."""
    x = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    top = x.max() if len(x) else 0.0
    return {
        "gini": gini(x),
        "share_above_10pct_of_max": float((x > 0.1 * top).mean()) if top > 0 else 0.0,
        "entries": int(len(x)),
        "histogram": magnitude_histogram(x, bins),
    }
