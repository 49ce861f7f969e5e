"""fxrec.funnel.cascade on hand-made requests: each stage picks from the one before, ties keep list
order, and value kept is the final stage's best value in a stage's set over that of everything."""

from __future__ import annotations

import numpy as np
import pytest

from fxrec.funnel.cascade import FunnelTally, retrieval_stage, run_request, top_by


def test_retrieval_keeps_eligible_ads_in_list_order_then_fills():
    listed = np.array([9, 3, -1, 7, 3])
    eligible = np.array([1, 2, 3, 4, 7])
    assert retrieval_stage(listed, eligible, np.array([4, 9, 2]), 3).tolist() == [3, 7, 4]
    assert retrieval_stage(listed, eligible, np.array([4]), 10).tolist() == [3, 7, 4, 1, 2]


def test_top_by_breaks_ties_by_position():
    assert top_by(np.array([5, 6, 7]), np.array([1.0, 2.0, 2.0]), 2).tolist() == [6, 7]


def test_a_request_through_the_stages_and_its_tally():
    eligible = np.array([1, 2, 3, 4, 5, 6])
    value = {1: 0.5, 2: 3.0, 3: 1.0, 4: -1.0, 5: 2.0, 6: 4.0}  # the final stage's values
    esr = {1: 0.9, 2: 0.1, 3: 0.8, 4: 0.7, 5: 0.6, 6: 0.0}
    funnelled = run_request(
        np.array([1, 2, 3, 4, 5]),  # 6, the best ad, is never retrieved
        eligible,
        np.array([], np.int64),
        lambda items: np.array([esr[int(i)] for i in items]),
        lambda items: np.array([value[int(i)] for i in items]),
        retrieval_k=4,
        esr_k=2,
        final_k=1,
    )
    assert funnelled.retrieved.tolist() == [1, 2, 3, 4]
    assert funnelled.ranked.tolist() == [1, 3]
    assert funnelled.winners.tolist() == [3] and funnelled.winner_values().tolist() == [1.0]
    tally = FunnelTally(final_k=1, recall_ks=[1, 2])
    all_values = np.array([value[i] for i in eligible.tolist()])
    tally.add(funnelled, eligible, all_values, clicked=np.array([2, 3, 99]), curves={"esr": funnelled.ranked})
    result = tally.result()
    stages = result["stages"]
    assert stages["retrieval"]["value_kept"] == pytest.approx(3.0 / 4.0)  # ad 2 was still there
    assert stages["esr"]["value_kept"] == pytest.approx(1.0 / 4.0)
    assert result["end_to_end_value_kept"] == pytest.approx(1.0 / 4.0)
    assert stages["retrieval"]["recall_of_clicked"] == pytest.approx(1.0)  # 99 is not eligible
    assert stages["esr"]["recall_of_clicked"] == pytest.approx(0.5)
    assert result["recall_at_k"]["esr"] == {"1": 0.0, "2": 0.5}
    assert [stages[s]["mean_size"] for s in ("retrieval", "esr", "final")] == [4, 2, 1]
