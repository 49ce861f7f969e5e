"""The heads' starting bias: a tiny first training day must not start a model at p ~ 0 or ~ 1."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch

from fxrec.config import FMConfig, TrainConfig
from fxrec.data.eventlog import EventLog, write_events
from fxrec.data.schema import DatasetSpec, FeatureSpec
from fxrec.factory import build_model
from fxrec.metrics import ne
from fxrec.train.trainer import Trainer

SPEC = DatasetSpec(
    name="thin_first_day",
    surfaces=["feed"],
    features=[FeatureSpec(name="item_id", kind="sparse", cardinality=64)],
)
MODEL = FMConfig(name="fm", role="fm", embedding_dim=8, dense_layers=[8], heads={"hidden": [8]},
                    interaction={"name": "dcnv2", "num_layers": 1, "low_rank": 4})  # fmt: skip
START = 1_700_006_400  # a UTC midnight


def _log(tmp_path, first_day_clicks: list[int], rate: float = 0.1, per_day: int = 3000, days: int = 3) -> EventLog:
    """Day 0 holds exactly `first_day_clicks`; later days `per_day` events at `rate` (item-dependent)."""
    rng = np.random.default_rng(0)
    item = [np.zeros(len(first_day_clicks), dtype=np.int64)]
    click = [np.asarray(first_day_clicks, dtype=np.float32)]
    ts = [START + np.arange(len(first_day_clicks), dtype=np.int64)]
    for d in range(1, days + 1):
        items = rng.integers(0, 50, per_day)
        p = np.clip(rate * (0.5 + items / 50), 0, 1)
        item.append(items)
        click.append((rng.random(per_day) < p).astype(np.float32))
        ts.append(START + d * 86_400 + np.sort(rng.integers(0, 86_400, per_day)))
    n = sum(len(c) for c in click)
    table = pa.table({
        "event_id": np.arange(n, dtype=np.int64), "ts": np.concatenate(ts), "user_id": np.arange(n, dtype=np.int64) % 97,
        "item_id": np.concatenate(item), "surface": ["feed"] * n, "click": np.concatenate(click),
    })  # fmt: skip
    write_events(table, SPEC, tmp_path / "events")
    return EventLog(tmp_path / "events")


def _fit(log, model_dir, config=TrainConfig(batch_size=256)):
    torch.manual_seed(0)
    trainer = Trainer(build_model(MODEL, log.spec, embedding_lr=config.embedding_lr), config, model_dir, progress=False)
    trainer.fit(log)
    return trainer, pl.read_parquet(model_dir / "predictions" / "*.parquet")


@pytest.mark.parametrize("first_day", [[0], [1, 1, 1]], ids=["one non-click", "three clicks"])
def test_a_tiny_first_day_does_not_wreck_the_start(tmp_path, first_day):
    log = _log(tmp_path, first_day, days=4)
    _, predictions = _fit(log, tmp_path / "fm")
    after_tiny_day = predictions.filter(pl.col("trained_through") == log.days[0])["pred_click"].to_numpy()
    assert 1 / 3 - 0.05 < after_tiny_day.mean() < 4 / 5 + 0.05  # Laplace: (0+1)/(1+2) or (3+1)/(3+2), not 1e-4
    later = predictions.filter(pl.col("trained_through") > log.days[0])  # once real days are in
    labels, probs = later["label_click"].to_numpy(), later["pred_click"].to_numpy()
    assert ne(labels, probs) < 1.0  # beats the base rate (the raw first-day start gave 1.5-10 here)
    assert 0.9 < probs.mean() / labels.mean() < 1.1


def test_the_start_comes_only_from_days_already_trained(tmp_path):
    """The bias set before day t's training uses days <= t, never a later day's labels."""
    log = _log(tmp_path, [0], days=3)
    trainer, _ = _fit(log, tmp_path / "fm", TrainConfig(batch_size=256, bias_warmup_events=10**9))
    from fxrec.data.reader import iter_frames
    from fxrec.train.trainer import LabelTally

    frames = [f for _, f in iter_frames(log, [log.spec.feature("item_id")])][:-1]  # the trained days
    seen = LabelTally(["click"])
    for frame in frames:
        seen.add(frame)
    note = trainer.start_at_base_rates(seen, "x")
    expected = (seen.positives["click"] + 1) / (seen.events + 2)
    assert f"-> {expected:.4f}" in note
    bias = float(trainer.model.heads.towers["click"][-1].bias)
    assert abs(torch.sigmoid(torch.tensor(bias)).item() - expected) < 1e-5


def test_a_full_first_day_keeps_its_own_rate(tmp_path):
    log = _log(tmp_path, [])
    trainer = Trainer(build_model(MODEL, log.spec), TrainConfig(), tmp_path / "fm", progress=False)
    from fxrec.data.reader import iter_frames
    from fxrec.train.trainer import LabelTally

    _, frame = next(iter(iter_frames(log, [log.spec.feature("item_id")])))
    note = trainer.start_at_base_rates(LabelTally(["click"]).add(frame), "day 1")
    rate = float(frame.labels["click"].mean())
    bias = float(trainer.model.heads.towers["click"][-1].bias)
    assert abs(torch.sigmoid(torch.tensor(bias)).item() - rate) < 0.001
    assert "day 1" in note and f"click {rate:.4f}" in note
