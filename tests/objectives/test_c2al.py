"""C2AL: cohort masks and divergences equal their definitions on a hand-computed case; the auxiliary heads
train on cohort-masked labels and are absent from the served model and its latency."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from fxrec.config import ModelConfig, TrainConfig
from fxrec.data.reader import iter_frames
from fxrec.factory import build_model, load_model, save_model_card
from fxrec.metrics.bootstrap import ne_difference
from fxrec.metrics.cohorts import cohort_divergences, js_divergence, prediction_histogram, split_axis
from fxrec.metrics.density import gini
from fxrec.metrics.ranking import calibration, ne
from fxrec.objectives.c2al import CohortAuxiliary, discover_pair
from fxrec.train.trainer import Trainer

# Eight events by hand: surface, an advertiser, a float activity count; a baseline's predictions.
COLUMNS = {
    "surface": np.array(["feed", "feed", "feed", "feed", "feed", "video", "video", "stories"]),
    "advertiser_id": np.array([1, 1, 1, 1, 2, 2, 3, 3]),
    "activity": np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
}
PROBS = np.array([0.1, 0.1, 0.1, 0.9, 0.1, 0.9, 0.9, 0.5])


def test_masks_equal_their_definitions():
    by_surface = {c.name: c.mask(COLUMNS).tolist() for c in split_axis("surface", COLUMNS)}
    assert by_surface == {
        "feed": [True] * 5 + [False] * 3,
        "stories": [False] * 7 + [True],
        "video": [False] * 5 + [True, True, False],
    }
    # two quantile ranges of activity: the median 3.5 is the edge, [-inf, 3.5) and [3.5, inf)
    low, high = split_axis("activity:2", COLUMNS)
    assert low.mask(COLUMNS).tolist() == [True] * 4 + [False] * 4
    assert high.mask(COLUMNS).tolist() == [False] * 4 + [True] * 4
    # advertiser size, two groups of about equal events: advertiser 1 has 4 of 8 events (share 0.5, small);
    # 2 and 3 have 2 each (sorted by count: 2, 3, then 1), so the cumulative shares are 0.25, 0.5, 1.0
    small, large = split_axis("advertiser_size:2", COLUMNS)
    assert (small.name, small.values, large.name, large.values) == ("small", (2, 3), "large", (1,))
    assert large.mask(COLUMNS).tolist() == [True] * 4 + [False] * 4


def test_divergences_equal_their_definition():
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(math.log(2))
    assert js_divergence([0.3, 0.7], [0.3, 0.7]) == 0.0
    # JS([.5, .5], [1, 0]): m = [.75, .25]
    by_hand = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * math.log(1 / 0.75)
    assert js_divergence([0.5, 0.5], [1.0, 0.0]) == pytest.approx(by_hand)
    # two bins split at the median prediction (0.1 < 0.3 < 0.5 < 0.9): feed [4/5, 1/5], video [0, 1]
    divergences = cohort_divergences(PROBS, COLUMNS, ["surface"], bins=2, min_share=0.2)
    assert prediction_histogram(PROBS[:5], np.array([0.3])).tolist() == [0.8, 0.2]
    (a, b, js), *rest = divergences.pairs
    assert {a.name, b.name} == {"feed", "video"} and not rest  # stories (1 of 8 events) is below 20%
    assert js == pytest.approx(js_divergence([0.8, 0.2], [0.0, 1.0]))


def test_discovery_picks_the_most_divergent_pair_larger_as_head():
    c2al, divergences = discover_pair(PROBS, COLUMNS, ["surface", "activity:2"], bins=2, min_share=0.2)
    js = {(a.label, b.label): v for a, b, v in divergences.pairs}
    assert (
        max(js.values()) == js[("surface=feed", "surface=video")]
    )  # JS(.8,.2 | 0,1) > JS(.75,.25 | .25,.75)
    assert (c2al.head.name, c2al.tail.name) == ("feed", "video")
    labels = c2al.labels(np.ones(8), COLUMNS)
    assert labels["click_c2al_head"].tolist() == [1.0] * 5 + [0.0] * 3
    assert labels["click_c2al_tail"].tolist() == [0.0] * 5 + [1.0, 1.0, 0.0]
    assert CohortAuxiliary(**c2al.to_dict()).to_dict() == c2al.to_dict()


def test_config_block():
    block = {
        "head": {"column": "surface", "values": ["feed"]},
        "tail": {"column": "surface", "values": ["video"]},
    }
    config = ModelConfig.model_validate({"name": "fm", "role": "fm", "c2al": block})
    assert config.c2al.head_weight == 0.5
    with pytest.raises(ValidationError, match="weights must be >= 0"):
        ModelConfig.model_validate({"name": "fm", "role": "fm", "c2al": {**block, "tail_weight": -1}})
    with pytest.raises(ValidationError, match="needs `values` or a range"):
        ModelConfig.model_validate(
            {"name": "fm", "role": "fm", "c2al": {**block, "head": {"column": "surface"}}}
        )


def test_gini_and_ne_bootstrap_by_definition():
    assert gini(np.ones(10)) == pytest.approx(0.0)
    assert gini(np.r_[np.zeros(9), 1.0]) == pytest.approx(0.9)  # (2·10 − 11)/10
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.3).astype(float)
    a, b = np.clip(labels * 0.5 + 0.2, 0, 1), np.full(400, 0.3)
    users = np.arange(400) // 4
    out = ne_difference(labels, [a], [b], users, resamples=200)
    assert out["ne_change_pct"] == pytest.approx(100 * (ne(labels, a) - ne(labels, b)) / ne(labels, b))
    assert out["calibration_difference"] == pytest.approx(calibration(labels, a) - calibration(labels, b))
    assert out["ne_low"] <= out["ne_change_pct"] <= out["ne_high"] < 0


def _linear_calls(model, batch) -> int:
    calls = []
    hooks = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    return len(calls)


def test_auxiliary_heads_train_and_are_absent_when_served(small_log, tmp_path):
    block = {
        "head": {"column": "surface", "values": ["feed"]},
        "tail": {"column": "surface", "values": ["video"]},
    }
    keys = {
        "name": "fm", "role": "fm", "tasks": ["click"], "embedding_dim": 8, "dense_layers": [8],
        "interaction": {"name": "attention_fm", "compressed": 4, "output_tokens": 2}, "heads": {"hidden": [8]},
    }  # fmt: skip
    config = ModelConfig.model_validate({**keys, "c2al": block})
    torch.manual_seed(0)
    model = build_model(config, small_log.spec)
    assert model.tasks == ["click", "click_c2al_head", "click_c2al_tail"]
    trainer = Trainer(
        model, TrainConfig(batch_size=256, threads=1, snapshots="none"), tmp_path / "fm", progress=False
    )
    assert trainer.task_weights == {"click": 1.0, "click_c2al_head": 0.5, "click_c2al_tail": 0.5}
    save_model_card(tmp_path / "fm", config, small_log, 0.05, {})
    trainer.fit(small_log)
    written = trainer.model_dir.prediction(small_log.days[-1])
    assert [c for c in pq.read_schema(written).names if "c2al" in c] == []  # never predicted, never evaluated

    served, _, _ = load_model(tmp_path / "fm")
    plain = build_model(ModelConfig.model_validate(keys), small_log.spec)
    assert served.tasks == ["click"] and list(served.heads.towers) == ["click"]
    assert not any("c2al" in name for name in served.state_dict())
    assert sum(p.numel() for p in served.parameters()) == sum(p.numel() for p in plain.parameters())
    # the same forward as the model without C2AL: the same Linear calls, the same outputs
    _, frame = next(iter_frames(small_log, [small_log.spec.feature(n) for n in served.features]))
    batch = frame.batch(0, 64)
    assert _linear_calls(served, batch) == _linear_calls(plain.eval(), batch)
    assert list(served(batch).logits) == ["click"]
    trained = torch.load(tmp_path / "fm" / "model.pt", weights_only=True)
    assert any("c2al" in k for k in trained)  # trained with the heads; they are dropped at load
