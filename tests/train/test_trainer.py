import numpy as np
import polars as pl
import pytest
import torch

from fxrec.config import FMConfig, TrainConfig, VMConfig
from fxrec.factory import build_model
from fxrec.train.trainer import Trainer, TrainingInterrupted

FM = FMConfig(name="fm", role="fm", embedding_dim=8, interaction={"name": "dcnv2", "num_layers": 1, "low_rank": 8}, heads={"hidden": [16]})


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
    """The model trained through day 2 ranks (AUC), predicts (NE against the day's own base rate, a
    feature-free predictor that knows the answer's mean) and is calibrated on day 3; and it predicts
    better than the model trained on day 0 alone (here AUC 0.69 / NE 0.945 / calibration 1.08,
    against NE 0.983 after one day)."""
    from fxrec.metrics import auc, calibration, ne

    predictions = _fit(small_log, tmp_path / "fm", TrainConfig(batch_size=128, passes_per_day=2))

    def metrics(day: str) -> tuple[float, float, float]:
        rows = predictions.filter(pl.col("trained_through") == day)
        labels, probs = rows["label_click"].to_numpy(), rows["pred_click"].to_numpy()
        return auc(labels, probs), ne(labels, probs), calibration(labels, probs)

    last_auc, last_ne, last_calibration = metrics(small_log.days[-2])
    assert last_auc > 0.62
    assert last_ne < 0.97
    assert 0.8 < last_calibration < 1.25
    assert last_ne < metrics(small_log.days[0])[1] - 0.02  # more days of training predict better


def test_vm_trains_on_its_surface_only(small_log, tmp_path):
    vm = VMConfig(name="vm_feed", role="vm", surfaces=["feed"], embedding_dim=8, heads={"hidden": [8]})
    predictions = _fit(small_log, tmp_path / "vm", TrainConfig(batch_size=256), vm)
    assert set(predictions["surface"].to_list()) == {small_log.spec.surfaces.index("feed")}
    assert "user_id" not in build_model(vm, small_log.spec).features  # the VM's feature gap


def _adam_model(log, config: TrainConfig, model_config=FM):
    torch.manual_seed(0)
    return build_model(model_config, log.spec, embedding_lr=config.embedding_lr, embedding_optimizer=config.embedding_optimizer)


def _rows_in_batch(model, batch) -> dict[str, torch.Tensor]:
    """Table name -> the rows a batch looks up (admission is off: KJT values are table rows)."""
    kjts = [batch.sparse] + ([batch.sequences] if batch.sequences is not None else [])
    lookups = {k: v for kjt in kjts for k, v in kjt.to_dict().items()}
    return {
        config.name: torch.cat([lookups[f].values() for f in config.feature_names if f in lookups]).unique()
        for config in model.sparse_arch.collection.embedding_bag_configs()
    }


def test_adam_embedding_optimizer_updates_only_the_looked_up_rows(small_log, tmp_path):
    from fxrec.data.reader import iter_frames

    config = TrainConfig(batch_size=256, embedding_optimizer="adam", embedding_lr=1e-2)
    model = _adam_model(small_log, config)
    trainer = Trainer(model, config, tmp_path, progress=False)
    assert model.fused_optimizer() is None and isinstance(trainer.embedding_optimizer, torch.optim.Adam)
    _, frame = next(iter_frames(small_log, [small_log.spec.feature(n) for n in model.features]))
    batch = next(frame.batches(256))
    before = {k: v.detach().clone() for k, v in model.sparse_arch.state_dict().items() if k.endswith(".weight")}
    trainer.train_step(batch)
    rows = _rows_in_batch(model, batch)
    for name, used in rows.items():
        weight = model.sparse_arch.state_dict()[f"collection.embedding_bags.{name}.weight"]
        changed = (weight != before[f"collection.embedding_bags.{name}.weight"]).any(dim=1)
        unused = torch.ones(len(changed), dtype=torch.bool)
        unused[used] = False
        assert changed[used[used > 0]].all(), f"{name}: a looked-up row did not move"
        assert not changed[unused].any(), f"{name}: a row outside the batch moved on the first step"


def test_adam_embedding_weight_decay_shrinks_rows_outside_the_batch(small_log, tmp_path):
    from fxrec.data.reader import iter_frames

    config = TrainConfig(batch_size=256, embedding_optimizer="adam", embedding_lr=1e-3, embedding_weight_decay=0.1)
    model = _adam_model(small_log, config)
    trainer = Trainer(model, config, tmp_path, progress=False)
    _, frame = next(iter_frames(small_log, [small_log.spec.feature(n) for n in model.features]))
    batch = next(frame.batches(256))
    name = "user_id"
    key = next(k for k in model.sparse_arch.state_dict() if k.endswith(f"{name}.weight"))
    before = model.sparse_arch.state_dict()[key].clone()
    trainer.train_step(batch)
    after = model.sparse_arch.state_dict()[key]
    unused = torch.ones(len(before), dtype=torch.bool)
    unused[_rows_in_batch(model, batch)[name]] = False
    unused[0] = False  # the missing-id row starts at zero: nothing to shrink
    assert (after[unused].norm(dim=1) < before[unused].norm(dim=1)).all()


def test_adam_embedding_state_checkpoints_and_resumes_exactly(small_log, tmp_path):
    config = TrainConfig(batch_size=256, checkpoint_every=4, embedding_optimizer="adam", embedding_lr=1e-2)

    def fit(model_dir, run_config):
        Trainer(_adam_model(small_log, run_config), run_config, model_dir, progress=False).fit(small_log)
        return pl.read_parquet(model_dir / "predictions" / "*.parquet").sort("event_id")

    uninterrupted = fit(tmp_path / "a", config)
    with pytest.raises(TrainingInterrupted):
        fit(tmp_path / "b", config.model_copy(update={"max_steps": 17}))  # mid-day 2
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["embedding_optimizer"]["state"]
    assert state and all(s["exp_avg"].abs().sum() > 0 for s in state.values())  # Adam's moments are saved
    resumed = fit(tmp_path / "b", config)
    np.testing.assert_allclose(resumed["pred_click"].to_numpy(), uninterrupted["pred_click"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_embedding_optimizer_settings_that_cannot_work_are_refused(small_log, tmp_path):
    with pytest.raises(ValueError, match="needs embedding_optimizer: adam"):
        TrainConfig(embedding_weight_decay=1e-3)
    fused_model = build_model(FM, small_log.spec)  # row-wise AdaGrad fused into the tables
    with pytest.raises(ValueError, match="needs unfused tables"):
        Trainer(fused_model, TrainConfig(embedding_optimizer="adam"), tmp_path, progress=False)


def _dense_parameters(model) -> list[torch.Tensor]:
    embedding = {id(p) for p in model.sparse_arch.parameters()}
    return [p.detach().clone() for p in model.parameters() if id(p) not in embedding]


def test_dense_lr_schedule_warms_up_then_decays_and_scales_the_updates(small_log, tmp_path):
    from fxrec.data.reader import iter_frames

    config = TrainConfig(batch_size=256, dense_lr=1e-2, dense_lr_warmup_steps=4, dense_lr_decay=0.5, dense_lr_decay_steps=2)
    trainer = Trainer(build_model(FM, small_log.spec), config, tmp_path, progress=False)
    _, frame = next(iter_frames(small_log, [small_log.spec.feature(n) for n in trainer.model.features]))
    batch = next(frame.batches(256))
    used = []
    for _ in range(7):
        trainer.train_step(batch)
        used.append(trainer.dense_optimizer.param_groups[0]["lr"])
    expected = [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2 * 0.5**0.5, 5e-3]  # warmup, then halved every 2 steps
    np.testing.assert_allclose(used, expected, rtol=1e-12)
    default = Trainer(build_model(FM, small_log.spec), TrainConfig(dense_lr=1e-2), tmp_path, progress=False)
    assert [default.dense_lr(s) for s in (0, 10, 10_000)] == [1e-2] * 3  # no schedule unless asked for

    # Adam's first step moves every parameter by about its learning rate: a 100-step warmup makes
    # the first update ~100x smaller than the unscheduled one from the same weights.
    moves = []
    for warmup in (0, 100):
        torch.manual_seed(0)
        model = build_model(FM, small_log.spec)
        trainer = Trainer(model, config.model_copy(update={"dense_lr_warmup_steps": warmup}), tmp_path, progress=False)
        before = _dense_parameters(model)
        trainer.train_step(batch)
        moves.append(max(float((a - b).abs().max()) for a, b in zip(_dense_parameters(model), before, strict=True)))
    assert moves[0] == pytest.approx(1e-2, rel=0.05)
    assert moves[1] == pytest.approx(1e-4, rel=0.05)


def test_dense_lr_schedule_resumes_exactly(small_log, tmp_path):
    config = TrainConfig(batch_size=256, checkpoint_every=4, dense_lr_warmup_steps=8, dense_lr_decay=0.7, dense_lr_decay_steps=5)
    uninterrupted = _fit(small_log, tmp_path / "a", config)
    with pytest.raises(TrainingInterrupted):
        _fit(small_log, tmp_path / "b", config.model_copy(update={"max_steps": 17}))  # mid-day 2
    resumed = _fit(small_log, tmp_path / "b", config)
    constant = _fit(small_log, tmp_path / "c", TrainConfig(batch_size=256))
    np.testing.assert_allclose(resumed["pred_click"].to_numpy(), uninterrupted["pred_click"].to_numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(uninterrupted["pred_click"].to_numpy(), constant["pred_click"].to_numpy(), atol=1e-4)


def _record_training_labels(monkeypatch) -> list[dict[str, np.ndarray]]:
    """Every train_step's batch: its event ids and the labels the loss will read."""
    steps: list[dict[str, np.ndarray]] = []
    train_step = Trainer.train_step

    def spy(self, batch):
        steps.append({"event_id": batch.meta["event_id"].numpy().copy(), **{t: v.numpy().copy() for t, v in batch.labels.items()}})
        return train_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", spy)
    return steps


def _raw_labels(log) -> pl.DataFrame:
    """Matured labels and when each conversion happened, straight from the log (UTC day ends: multiples of 86400 s)."""
    raw = pl.from_arrow(log.read_all(["event_id", "ts", "click", "conversion", "conversion_delay_s"]))
    return raw.with_columns(
        conversion_time=pl.col("ts") + pl.col("conversion_delay_s").cast(pl.Float64),
        day_end=(pl.col("ts") // 86_400 + 1) * 86_400,
    )


@pytest.mark.parametrize("matured", [False, True])
def test_each_day_trains_only_on_conversions_that_happened_by_its_end(small_log, tmp_path, monkeypatch, matured):
    """The loss of day t never reads a conversion that happens after midnight ending day t (unless the
    oracle flag asks for matured labels); predictions are scored on matured labels either way."""
    steps = _record_training_labels(monkeypatch)
    config = TrainConfig(batch_size=512, train_on_matured_labels=matured)
    light = FM.model_copy(update={"features": ["item_id", "advertiser_id", "hour", "bid"]})  # labels are what matters
    predictions = _fit(small_log, tmp_path / "fm", config, light)
    trained = pl.DataFrame({
        "event_id": np.concatenate([s["event_id"] for s in steps]),
        "trained_click": np.concatenate([s["click"] for s in steps]),
        "trained_conversion": np.concatenate([s["conversion"] for s in steps]),
    }).join(_raw_labels(small_log), on="event_id")
    assert trained.height == small_log.num_rows() - small_log.read_day(small_log.days[-1]).num_rows
    observed = (pl.col("conversion") > 0) & (pl.col("conversion_time") < pl.col("day_end"))
    expected = trained.select(pl.when(observed).then(1.0).otherwise(0.0)).to_series().to_numpy()
    assert (trained["conversion"].to_numpy() > expected).sum() > 0, "no conversion crosses a day end: the test proves nothing"
    np.testing.assert_array_equal(trained["trained_conversion"].to_numpy(), trained["conversion"] if matured else expected)
    np.testing.assert_array_equal(trained["trained_click"].to_numpy(), trained["click"].to_numpy())
    scored = predictions.join(_raw_labels(small_log), on="event_id")
    np.testing.assert_array_equal(scored["label_conversion"].to_numpy(), scored["conversion"].to_numpy())
    assert scored["label_conversion"].sum() > 0


def test_progress_ne_follows_the_models_first_task(small_log, tmp_path, monkeypatch):
    """A model without `click` (here conversion only, on a log that has clicks too): the progress bar's
    running NE pairs that task's logits with that task's labels, never the log's clicks."""
    from fxrec.train.trainer import RunningNE

    model = build_model(FM.model_copy(update={"tasks": ["conversion"]}), small_log.spec)
    assert model.tasks == ["conversion"]
    trainer = Trainer(model, TrainConfig(batch_size=256, max_steps=3), tmp_path, progress=False)
    steps, updates = [], []
    train_step, update = Trainer.train_step, RunningNE.update

    def spy_step(self, batch):
        logits = train_step(self, batch)
        steps.append((logits["conversion"].detach().clone(), batch.labels["conversion"].clone()))
        return logits

    def spy_update(self, logits, labels):
        updates.append((self.task, logits.clone(), labels.clone()))
        update(self, logits, labels)

    monkeypatch.setattr(Trainer, "train_step", spy_step)
    monkeypatch.setattr(RunningNE, "update", spy_update)
    with pytest.raises(TrainingInterrupted):
        trainer.fit(small_log)
    assert len(updates) == len(steps) == 3 and trainer.running_ne.task == "conversion"
    for (task, logits, labels), (step_logits, step_labels) in zip(updates, steps, strict=True):
        assert task == "conversion"
        torch.testing.assert_close(logits, step_logits, rtol=0, atol=0)
        torch.testing.assert_close(labels, step_labels, rtol=0, atol=0)
