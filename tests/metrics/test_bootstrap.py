import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fxrec.metrics import auc
from fxrec.metrics.bootstrap import _SortedScores, auc_difference


def _data(rows: int = 4000, users: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)
    user_effect = rng.normal(0, 1, users)[user]
    labels = (rng.random(rows) < 1 / (1 + np.exp(-(user_effect + rng.normal(0, 1, rows))))).astype(float)
    return rng, user, user_effect, labels


def test_weighted_auc_matches_sklearn_with_ties_and_repeated_rows():
    rng, _, _, labels = _data()
    probs = np.round(rng.random(len(labels)) * 0.5 + 0.3 * labels, 2)  # many ties
    scores = _SortedScores(labels, probs)
    assert scores.auc(np.ones(len(labels))) == pytest.approx(auc(labels, probs), abs=1e-12)
    weights = rng.integers(0, 4, len(labels)).astype(float)  # a row drawn k times = k copies
    copies = np.repeat(np.arange(len(labels)), weights.astype(int))
    assert scores.auc(weights) == pytest.approx(roc_auc_score(labels[copies], probs[copies]), abs=1e-12)


def test_identical_models_differ_by_exactly_zero():
    rng, user, _, labels = _data()
    probs = rng.random(len(labels))
    diff = auc_difference(labels, [probs], [probs.copy()], user, resamples=200)
    assert diff["difference"] == 0.0 and diff["low"] == 0.0 and diff["high"] == 0.0


def test_interval_separates_a_better_model_and_is_paired():
    rng, user, effect, labels = _data()
    noise = rng.normal(0, 1, len(labels))
    better = effect + noise  # knows the user effect
    worse = effect + noise + rng.normal(0, 1.5, len(labels))  # the same, plus its own noise
    diff = auc_difference(labels, [better], [worse], user, resamples=500)
    assert diff["difference"] > 0 and diff["low"] > 0 and diff["p_a_ahead"] == 1.0
    # Paired draws cancel the test split's own noise: the difference's interval is narrower than
    # either model's own AUC interval over the same user draws.
    alone = auc_difference(labels, [better], [np.zeros(len(labels))], user, resamples=500)
    assert diff["high"] - diff["low"] < 0.6 * (alone["high"] - alone["low"])
    assert diff["clusters"] == 80


def test_seed_lists_and_bad_lengths():
    rng, user, _, labels = _data(rows=500)
    a = [rng.random(500) for _ in range(3)]
    diff = auc_difference(labels, a, a[:1], user, resamples=50)
    assert diff["difference"] == pytest.approx(np.mean([auc(labels, p) for p in a]) - auc(labels, a[0]))
    with pytest.raises(ValueError, match="rows"):
        auc_difference(labels, [a[0][:10]], [a[1]], user)
    with pytest.raises(ValueError, match="clusters"):
        auc_difference(labels, [a[0]], [a[1]], user[:10])
