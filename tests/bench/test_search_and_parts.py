"""bench/quality_peers.py's search and parts: one trial list for all models, validation-only pick,
resumable per-run records, parts that fit their time budget and cover every run exactly once."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _parts import RunCache, plan_parts  # noqa: E402
from _search import SEARCH_SPACE, grid, sample_trials, select_trial  # noqa: E402


def test_trials_are_one_seeded_sample_and_a_longer_search_extends_a_shorter_one():
    eight = sample_trials(8)
    assert eight == sample_trials(8)  # a second process (another part, another model) gets the same list
    assert sample_trials(3) == eight[:3]
    assert len(set(eight)) == 8 and all(t in grid() for t in eight)
    assert len(grid()) == np.prod([len(v) for v in SEARCH_SPACE.values()])
    assert sample_trials(8, seed=1) != eight
    with pytest.raises(ValueError, match="between 1 and"):
        sample_trials(len(grid()) + 1)


def test_selection_takes_the_best_validation_auc_and_the_earlier_trial_on_a_tie():
    assert select_trial({0: 0.70, 1: 0.72, 2: 0.71}) == 1
    assert select_trial({3: 0.72, 1: 0.72, 2: 0.60}) == 1


def test_cache_keeps_runs_per_protocol_and_writes_predictions_beside_them(tmp_path):
    cache = RunCache(tmp_path, {"max_epochs": 6})
    path = cache.final_path("movielens", "fxrec_dcnv2", trials=8, seed=1)
    cache.save(path, {"test_auc": 0.7}, probs=np.array([0.1, 0.9]))
    assert RunCache(tmp_path, {"max_epochs": 6}).load(path) == {"test_auc": 0.7}
    np.testing.assert_allclose(cache.load_probs(path), [0.1, 0.9])
    other = RunCache(tmp_path, {"max_epochs": 5})  # a changed protocol never sees the old runs
    assert other.load(other.final_path("movielens", "fxrec_dcnv2", trials=8, seed=1)) is None
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("budget", [100.0, 600.0, 2700.0])
def test_parts_fit_the_budget_and_run_every_trial_and_the_finals_once(budget):
    runs = {
        ("movielens", "a"): 30.0,
        ("movielens", "b"): 45.0,
        ("simulator", "a"): 150.0,
        ("simulator", "b"): 20.0,
    }
    trials, seeds = 8, 3
    parts = plan_parts(runs, trials, seeds, budget)
    for part in parts:
        run = max(runs[(part.dataset, m)] for m in part.models)
        if seeds * run <= budget:  # only final seeds that overrun alone may exceed it
            assert part.seconds <= budget + 1e-9, part
        assert ("--trial-range" in part.command(trials, seeds)) is not part.finals
    for dataset, model in runs:
        mine = [p for p in parts if p.dataset == dataset and model in p.models]
        assert sorted(k for p in mine for k in range(*p.trial_range)) == list(range(trials)), mine
        assert sum(p.finals for p in mine) == 1  # the finals run once, in the part without a range
    total = sum(run * (trials + seeds) for run in runs.values())
    assert sum(p.seconds for p in parts) == pytest.approx(total)  # nothing counted twice or left out
