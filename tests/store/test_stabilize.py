"""Drift metrics: centroid shift and mean cosine between versions, raw and after stabilization."""

from __future__ import annotations

import numpy as np
import pytest

from fxrec.store import MemoryStore, drift, version_drift


def test_drift_of_known_moves():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, 8))
    same = drift(base, base)
    assert same.keys == 500 and same.centroid_shift == pytest.approx(0.0) and same.mean_cosine == pytest.approx(1.0)
    offset = np.full(8, 0.5)
    assert drift(base, base + offset).centroid_shift == pytest.approx(np.linalg.norm(offset))
    assert drift(base, -base).mean_cosine == pytest.approx(-1.0)
    x, y = np.eye(2)[[0]], np.eye(2)[[1]]
    assert drift(x, y).mean_cosine == pytest.approx(0.0)
    assert drift(np.zeros((1, 2)), y).mean_cosine == 0.0  # no direction, no NaN
    with pytest.raises(ValueError, match="same shape"):
        drift(base, base[:, :4])


def test_version_drift_reads_the_store_and_stabilization_damps_it():
    rng = np.random.default_rng(1)
    store = MemoryStore(dim=8, keep_versions=3)
    keys = np.arange(200)
    first = rng.standard_normal((200, 8)).astype(np.float32)
    jump = np.full(8, 1.0, dtype=np.float32)
    store.put(keys, first, version=1, ts=0)
    store.put(keys[:150], first[:150] + jump, version=2, ts=1)
    report = version_drift(store, keys)
    assert report.raw.keys == 150 and report.version_pairs == {"2<-1": 150}
    assert report.raw.centroid_shift == pytest.approx(np.linalg.norm(jump), rel=1e-5)
    # served = mean(v2, v1) vs v1 alone: the served centroid moves half as far
    assert report.stabilized.centroid_shift == pytest.approx(np.linalg.norm(jump) / 2, rel=1e-5)
    assert report.stabilized.mean_cosine > report.raw.mean_cosine
    assert version_drift(store, keys, k=1).stabilized.centroid_shift == pytest.approx(np.linalg.norm(jump), rel=1e-5)
    assert version_drift(store, np.array([199])).raw.keys == 0  # one version only: nothing to compare
