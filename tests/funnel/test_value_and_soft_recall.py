"""The value formula, soft recall@K on hand-computed cases, and the ESR's score = the formula of its heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fxrec.funnel import EarlyStageRanker, SeparateRankers, TowerInputs, soft_recall_at_k, value
from fxrec.funnel.soft_recall import soft_recall_per_request
from fxrec.funnel.value import HIDE_PENALTY, post_click_conversion


def test_value_is_one_formula_for_numpy_torch_and_floats():
    bid, ctr, cvr, hide = 2.0, 0.1, 0.25, 0.3
    expected = 2.0 * 0.1 * 0.25 - HIDE_PENALTY * 0.3
    assert value(bid, ctr, cvr, hide) == pytest.approx(expected)
    assert value(np.array([bid]), np.array([ctr]), np.array([cvr]), np.array([hide]))[0] == pytest.approx(
        expected
    )
    out = value(torch.tensor([bid]), torch.tensor([ctr]), torch.tensor([cvr]), torch.tensor([hide]), 0.5)
    assert float(out[0]) == pytest.approx(2.0 * 0.1 * 0.25 - 0.5 * 0.3)
    # the post-click rate makes bid x pCTR x pCVR the model's bid x pCTCVR
    assert float(post_click_conversion(np.array([0.2]), np.array([0.05]))[0]) == pytest.approx(0.25)
    assert float(post_click_conversion(torch.tensor([0.1]), torch.tensor([0.3]))[0]) == 1.0  # clipped


def test_soft_recall_matches_a_hand_computed_case():
    # request 7: values 5, 4, 3, 1; the ESR orders them 1st, 4th, 3rd, 2nd (scores .9 .1 .5 .6)
    #   K=2: ESR keeps {5, 1} = 6 of the best {5, 4} = 9 -> 2/3
    # request 3: values 2, -1, 1; the ESR prefers the negative one: K=2 keeps {-1, 2} = 1 of {2, 1} = 3 -> 1/3
    # request 9: every value <= 0: nothing to keep, left out
    groups = np.array([7, 7, 7, 7, 3, 3, 3, 9, 9])
    values = np.array([5.0, 4.0, 3.0, 1.0, 2.0, -1.0, 1.0, -1.0, 0.0])
    scores = np.array([0.9, 0.1, 0.5, 0.6, 0.5, 0.8, 0.2, 0.3, 0.4])
    requests, ratio = soft_recall_per_request(scores, values, groups, 2)
    assert requests.tolist() == [3, 7, 9]
    assert ratio[0] == pytest.approx(1 / 3) and ratio[1] == pytest.approx(2 / 3) and np.isnan(ratio[2])
    assert soft_recall_at_k(scores, values, groups, 2) == pytest.approx((1 / 3 + 2 / 3) / 2)
    # K past the request's size: both stages keep everything
    assert soft_recall_at_k(scores[:4], values[:4], groups[:4], 10) == pytest.approx(1.0)
    # rows in any order give the same answer
    shuffle = np.random.default_rng(0).permutation(len(groups))
    assert soft_recall_at_k(scores[shuffle], values[shuffle], groups[shuffle], 2) == pytest.approx(0.5)


def test_soft_recall_ties_share_the_last_slots_by_their_mean_value():
    # a constant ESR on values 6, 3, 0, 3 at K=1 keeps the mean value 3 of the 6 attainable
    values = np.array([6.0, 3.0, 0.0, 3.0])
    assert soft_recall_at_k(np.zeros(4), values, np.zeros(4, int), 1) == pytest.approx(3 / 6)
    # one clear winner (the 3), then a tie of the rest for the second slot: (3 + mean(6, 0, 3)) / (6 + 3)
    scores = np.array([0.0, 1.0, 0.0, 0.0])
    assert soft_recall_at_k(scores, values, np.zeros(4, int), 2) == pytest.approx((3 + 3) / 9)
    # the final stage's own ties cost nothing
    assert soft_recall_at_k(values, values, np.zeros(4, int), 2) == pytest.approx(1.0)


def _inputs(rng: torch.Generator, n: int, features: dict[str, int], dense: int) -> TowerInputs:
    ids = {name: torch.randint(0, rows, (n, 3), generator=rng) for name, rows in features.items()}
    return TowerInputs(ids, torch.randn(n, dense, generator=rng))


def test_esr_score_is_the_value_formula_of_its_heads():
    torch.manual_seed(0)
    tables = {"user_id": 50, "item_id": 40}
    esr = EarlyStageRanker(
        tables, {"user_id": "user_id", "hist_item_id": "item_id"}, {"item_id": "item_id"}, 2, 1
    )
    rng = torch.Generator().manual_seed(1)
    user = TowerInputs(
        {
            "user_id": torch.randint(0, 50, (1, 1), generator=rng),
            "hist_item_id": torch.randint(0, 40, (1, 5), generator=rng),
        },
        torch.randn(1, 2, generator=rng),
    )
    ads = _inputs(rng, 30, {"item_id": 40}, 1)
    bid = torch.rand(30, generator=rng) * 3
    with torch.no_grad():
        u, a = esr.user_vectors(user), esr.ad_vectors(ads)  # one request, 30 candidates: u broadcasts
        heads = esr.heads(u, a)
        expected = value(bid, heads["click"], heads["conversion"], heads["hide"], esr.hide_penalty)
        assert torch.equal(esr.score(u, a, bid), expected)
        assert set(heads) == {"click", "conversion", "hide"} and heads["click"].shape == (30,)
        # the same pairs, the user vector repeated per row
        assert torch.allclose(esr.heads(u.expand(30, -1), a)["hide"], heads["hide"])
    # single-task models combine by the same formula
    separate = SeparateRankers(
        {
            t: EarlyStageRanker(tables, {"user_id": "user_id"}, {"item_id": "item_id"}, 2, 1, tasks=[t])
            for t in ("click", "conversion", "hide")
        }
    )
    with torch.no_grad():
        u, a = separate.user_vectors(user), separate.ad_vectors(ads)
        heads = separate.heads(u, a)
        assert torch.equal(
            separate.score(u, a, bid), value(bid, heads["click"], heads["conversion"], heads["hide"])
        )


def test_esr_saves_and_loads(tmp_path):
    esr = EarlyStageRanker(
        {"user_id": 10, "item_id": 10},
        {"user_id": "user_id"},
        {"item_id": "item_id"},
        tasks=["click", "hide"],
    )
    esr.notes["trained_before"] = "2026-01-07"
    esr.save(tmp_path / "esr")
    loaded = EarlyStageRanker.load(tmp_path / "esr")
    assert loaded.tasks == ["click", "hide"] and loaded.notes == {"trained_before": "2026-01-07"}
    for key, tensor in esr.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)
