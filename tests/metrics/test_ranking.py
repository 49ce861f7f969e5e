import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from fxrec.metrics import auc, calibration, evaluate, gauc, log_loss, ne, relative_ne_change


def test_ne_hand_computed():
    labels = np.array([1, 0, 0, 0])
    probs = np.array([0.5, 0.5, 0.5, 0.5])
    # log loss = ln 2; base rate 0.25 -> entropy = -(0.25 ln .25 + .75 ln .75)
    entropy = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert ne(labels, probs) == pytest.approx(np.log(2) / entropy)


def test_ne_of_base_rate_prediction_is_one():
    rng = np.random.default_rng(0)
    labels = (rng.random(10_000) < 0.1).astype(float)
    assert ne(labels, np.full(len(labels), labels.mean())) == pytest.approx(1.0)


def test_auc_and_log_loss_match_sklearn_with_ties():
    rng = np.random.default_rng(1)
    labels = (rng.random(5000) < 0.3).astype(int)
    probs = np.round(rng.random(5000) * 0.5 + 0.4 * labels, 2)  # rounding creates many ties
    assert auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert log_loss(labels, probs) == pytest.approx(sk_log_loss(labels, probs), rel=1e-6)  # clip eps differs


def test_auc_hand_computed():
    # positives 0.8, 0.4; negatives 0.4, 0.2: pairs (0.8>0.4)=1, (0.8>0.2)=1, (0.4=0.4)=0.5, (0.4>0.2)=1
    assert auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.2])) == pytest.approx(3.5 / 4)


def test_gauc_is_event_weighted_mean_of_user_aucs():
    users = np.array([1, 1, 1, 2, 2, 3, 3])
    labels = np.array([1, 0, 0, 1, 0, 1, 1])  # user 3 has no negative: skipped
    probs = np.array([0.9, 0.1, 0.95, 0.2, 0.8, 0.5, 0.6])
    user1 = roc_auc_score([1, 0, 0], [0.9, 0.1, 0.95])  # 0.5
    user2 = roc_auc_score([1, 0], [0.2, 0.8])  # 0.0
    assert gauc(labels, probs, users) == pytest.approx((3 * user1 + 2 * user2) / 5)


def test_calibration_and_relative_change():
    assert calibration(np.array([1, 0, 0, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(2.0)
    assert relative_ne_change(0.99, 1.0) == pytest.approx(-1.0)


def test_evaluate_matches_torchmetrics_auc():
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import binary_auroc

    rng = np.random.default_rng(2)
    labels = (rng.random(3000) < 0.2).astype(int)
    probs = rng.random(3000) * 0.6 + 0.3 * labels
    result = evaluate(labels, probs, users=rng.integers(0, 50, 3000))
    expected = float(binary_auroc(torch.tensor(probs), torch.tensor(labels)))
    assert result["auc"] == pytest.approx(expected, abs=1e-6)
    assert result["n_eval"] == 3000
