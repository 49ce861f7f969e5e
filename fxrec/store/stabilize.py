"""How much embeddings move when a new FM snapshot is published, raw and after SUM stabilization.

A republished user model shifts the whole embedding distribution; VMs trained on the old one see the
shift as noise. Two numbers track it, both over the same keys in two versions:

- centroid shift: L2 distance between the two versions' mean vectors (a global move of the cloud;
  the LoopFM paper finds a refreshed FM checkpoint moves it ~1000x more than a fixed one);
- mean cosine: average cosine between each key's old and new vector (per-key rotation; 1 = unchanged).

`version_drift` reads them off a store: the newest entry against the one before it (raw), and the
served stabilized mean (mean of the last k entries) against the mean served before the newest entry
arrived (stabilized), which is how much serving actually moved.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from fxrec.store.base import EmbeddingStore


@dataclass
class Drift:
    """Drift between two row-aligned sets of vectors (same keys)."""

    keys: int
    centroid_shift: float
    mean_cosine: float


@dataclass
class VersionDrift:
    raw: Drift  # newest entry vs the entry before it
    stabilized: Drift  # served mean of the last k entries vs the served mean before the newest entry
    version_pairs: dict[str, int]  # "new<-previous" fm_version pair -> number of keys compared


def drift(previous: np.ndarray, current: np.ndarray) -> Drift:
    """Centroid shift and mean cosine between previous (n, d) and current (n, d), rows aligned by key."""
    previous = np.asarray(previous, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    if previous.shape != current.shape or previous.ndim != 2:
        raise ValueError(f"previous and current must both be (n, d) with the same shape, got {previous.shape} and {current.shape}")
    n = len(previous)
    if n == 0:
        return Drift(keys=0, centroid_shift=float("nan"), mean_cosine=float("nan"))
    shift = float(np.linalg.norm(current.mean(axis=0) - previous.mean(axis=0)))
    norms = np.linalg.norm(previous, axis=1) * np.linalg.norm(current, axis=1)
    # A zero vector has no direction: count it as orthogonal rather than dividing by zero.
    cosine = np.where(norms > 0, (previous * current).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0)
    return Drift(keys=n, centroid_shift=shift, mean_cosine=float(cosine.mean()))


def version_drift(store: EmbeddingStore, keys: np.ndarray, k: int | None = None, now: int | None = None) -> VersionDrift:
    """Raw and stabilized drift for the keys that hold at least two unexpired entries.

    Stabilized "before" is the mean of the entries after the newest, up to k of them, among those
    still kept; when k == keep_versions the oldest entry of the previous window has already been
    dropped, so it is the mean of what remains.
    """
    window = k if k is not None else store.keep_versions
    if not 1 <= window <= store.keep_versions:
        raise ValueError(f"k must be in [1, keep_versions={store.keep_versions}], got {k!r}")
    vectors, versions, counts = store.get_history(keys, now=now)
    rows = np.flatnonzero(counts >= 2)
    vectors, versions, counts = vectors[rows], versions[rows], counts[rows]
    raw = drift(vectors[:, 1], vectors[:, 0])
    slots = np.arange(store.keep_versions)[None, :]
    after = (slots < np.minimum(counts, window)[:, None]).astype(np.float64)
    before = ((slots >= 1) & (slots < np.minimum(counts, window + 1)[:, None])).astype(np.float64)
    served_after = (vectors * after[:, :, None]).sum(axis=1) / after.sum(axis=1, keepdims=True).clip(min=1)
    served_before = (vectors * before[:, :, None]).sum(axis=1) / before.sum(axis=1, keepdims=True).clip(min=1)
    pairs = Counter(f"{new}<-{old}" for new, old in zip(versions[:, 0].tolist(), versions[:, 1].tolist(), strict=True))
    return VersionDrift(raw=raw, stabilized=drift(served_before, served_after), version_pairs=dict(pairs))
