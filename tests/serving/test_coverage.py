"""SOLARIS offline: tiers assigned from the replayed log, and NE per coverage scenario."""

from __future__ import annotations

import numpy as np

from fxrec.jobs.replay import CoverageSettings, _Day, assign_tiers, solaris_report


def _day(users, items, ts, dim=2, user_vectors=None):
    n = len(users)
    tae = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    uv = np.asarray(user_vectors, np.float32) if user_vectors is not None else np.ones((n, 2), np.float32)
    return _Day(np.array(users), np.array(items), np.array(ts), tae, np.ones(n, bool), uv, np.ones(n, bool))


def test_tiers_follow_the_request_window():
    settings = CoverageSettings(ttl_seconds=100, delay_seconds=1, k=1)
    yesterday = _day([7, 8], [1, 2], [0, 0], user_vectors=[[1, 0], [0, 1]])
    today = _day(
        [1, 1, 1, 1, 2, 3],
        [10, 10, 11, 10, 12, 13],
        [1000, 1050, 1060, 1155, 1000, 1000],
        user_vectors=[[1, 0]] * 5 + [[0, 0]],
    )
    today.user_found[5] = False  # user 3 has no embedding: nothing to borrow from
    tier, value = assign_tiers(yesterday, today, settings)
    # 0: first request of the user -> similar user (user 7 is nearest to [1, 0]);
    # 1: the same pair 50 s later -> pair cache, the earlier request's TAE;
    # 2: a new item 60 s after two requests -> the user's aggregate;
    # 3: the pair again 105 s after its last request (ttl 100: expired) but 95 s after item 11 -> aggregate of [11];
    # 4: user 2, first request -> similar; 5: no embedding -> missing
    assert tier.tolist() == [2, 0, 1, 1, 2, 3]
    np.testing.assert_allclose(value[1], today.tae[0])
    np.testing.assert_allclose(value[2], today.tae[:2].mean(axis=0))
    np.testing.assert_allclose(value[3], today.tae[2])
    np.testing.assert_allclose(value[0], yesterday.tae[0])


def test_report_on_a_trained_run(served_run):
    report = solaris_report(served_run, "vm_transfer", CoverageSettings(days=1))
    coverage = report["cumulative_coverage"]
    assert 0 <= coverage["pair-cache"] <= coverage["user-aggregate"] <= coverage["similar-user"] <= 1
    assert abs(sum(report["tier_share"].values()) - 1) < 1e-9
    ne = report["ne"]
    assert ne["sweep: 100% of events get their TAE"] == ne["own TAE on every event (offline upper bound)"]
    assert ne["sweep: 0% of events get their TAE"] == ne["no TAE (all missing)"]
    assert all(np.isfinite(v) for v in ne.values())
