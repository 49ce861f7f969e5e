import numpy as np
import polars as pl
import pytest
import torch

from fxrec.config import ModelConfig, TrainConfig
from fxrec.models.ranking import build_model
from fxrec.train.trainer import Trainer, TrainingInterrupted

FM = ModelConfig(name="fm", role="fm", embedding_dim=8, interaction={"name": "dcnv2", "num_layers": 1, "low_rank": 8}, heads={"hidden": [16]})


def _fit(log, model_dir, config: TrainConfig, model_config=FM):
    torch.manual_seed(0)
    model = build_model(model_config, log.spec, embedding_lr=config.embedding_lr)
    Trainer(model, config, model_dir, progress=False).fit(log, surfaces=model_config.surfaces)
    return pl.read_parquet(model_dir / "predictions" / "*.parquet").sort("event_id")


def test_progressive_predictions_come_only_from_earlier_days(small_log, tmp_path):
    predictions = _fit(small_log, tmp_path / "fm", TrainConfig(batch_size=256))
    first_day = small_log.days[0]
    day_of_event = pl.from_arrow(small_log.read_all(["event_id", "ts"])).with_columns(
        day=pl.from_epoch("ts").dt.strftime("%Y-%m-%d")
    )
    joined = predictions.join(day_of_event, on="event_id")
    assert joined.height == predictions.height
    assert (joined["trained_through"] < joined["day"]).all(), "a prediction came from a model trained on its own day"
    assert first_day not in set(joined["day"].to_list())  # nothing trained before day 0: no evaluation
    assert joined.height == small_log.num_rows() - small_log.read_day(first_day).num_rows
    assert set(predictions["trained_through"]) == set(small_log.days[:-1])
    snapshots = sorted(p.name for p in (tmp_path / "fm" / "snapshots").iterdir())
    assert snapshots == [f"day={d}.pt" for d in small_log.days[:-1]]


def test_resume_after_crash_reaches_the_same_predictions(small_log, tmp_path):
    config = TrainConfig(batch_size=256, checkpoint_every=4)
    uninterrupted = _fit(small_log, tmp_path / "a", config)
    with pytest.raises(TrainingInterrupted):
        _fit(small_log, tmp_path / "b", config.model_copy(update={"max_steps": 17}))  # mid-day 2
    resumed = _fit(small_log, tmp_path / "b", config)
    assert resumed.height == uninterrupted.height
    np.testing.assert_allclose(resumed["pred_click"].to_numpy(), uninterrupted["pred_click"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_training_beats_the_base_rate(small_log, tmp_path):
    from fxrec.metrics import auc

    predictions = _fit(small_log, tmp_path / "fm", TrainConfig(batch_size=128, passes_per_day=2))
    last = predictions.filter(pl.col("trained_through") == small_log.days[-2])
    assert auc(last["label_click"].to_numpy(), last["pred_click"].to_numpy()) > 0.55


def test_vm_trains_on_its_surface_only(small_log, tmp_path):
    vm = ModelConfig(name="vm_feed", role="vm", surfaces=["feed"], embedding_dim=8, heads={"hidden": [8]})
    predictions = _fit(small_log, tmp_path / "vm", TrainConfig(batch_size=256), vm)
    assert set(predictions["surface"].to_list()) == {small_log.spec.surfaces.index("feed")}
    assert "user_id" not in build_model(vm, small_log.spec).features  # the VM's feature gap
