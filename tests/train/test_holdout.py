"""Holdout training: early stopping on validation AUC, an untouched test split, leak-free histories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fxrec.config import FMConfig, TrainConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.reader import iter_frames
from fxrec.data.sources.movielens import split_points
from fxrec.factory import build_model
from fxrec.models.checkpoint import model_state
from fxrec.train import holdout
from fxrec.train.holdout import SplitFrames, fit_holdout, split_by_event_id
from fxrec.train.trainer import Trainer

MODEL = FMConfig(
    name="fm",
    role="fm",
    tasks=["click"],
    embedding_dim=8,
    interaction={"name": "dcnv2", "num_layers": 1, "low_rank": 8},
    heads={"hidden": [16]},
)


@pytest.fixture(scope="module")
def split(small_log: EventLog) -> tuple[SplitFrames, int, int]:
    train_end, valid_end = split_points(small_log.read_all(["event_id"]).column("event_id").to_numpy())
    return split_by_event_id(small_log, small_log.spec.features, train_end, valid_end), train_end, valid_end


def _trainer(log: EventLog, tmp_path) -> Trainer:
    torch.manual_seed(0)
    return Trainer(build_model(MODEL, log.spec), TrainConfig(batch_size=512), tmp_path, progress=False)


def _history_by_event(frame, key: str) -> dict[int, list[int]]:
    batch = frame.batch(0, frame.num_rows)
    jagged = batch.sequences.to_dict()[key]
    values, offsets = jagged.values().tolist(), jagged.offsets().tolist()
    ids = batch.meta["event_id"].tolist()
    return {event: values[offsets[i] : offsets[i + 1]] for i, event in enumerate(ids)}


def test_splits_partition_the_log_by_event_id(small_log, split):
    frames, train_end, valid_end = split
    ids = {name: getattr(frames, name).meta["event_id"].numpy() for name in ("train", "valid", "test")}
    assert (ids["train"] < train_end).all() and (ids["test"] >= valid_end).all()
    assert ((ids["valid"] >= train_end) & (ids["valid"] < valid_end)).all()
    assert sum(len(v) for v in ids.values()) == small_log.num_rows()


def test_histories_are_the_whole_log_histories_and_strictly_earlier(small_log, split):
    frames, _, _ = split
    reference: dict[int, list[int]] = {}
    for _, frame in iter_frames(small_log, small_log.spec.features):
        reference.update(_history_by_event(frame, "hist_item_id"))
    for name in ("train", "valid", "test"):
        frame = getattr(frames, name)
        # Identical to iter_frames over the whole log: not recomputed inside the split.
        assert _history_by_event(frame, "hist_item_id") == {
            e: reference[e] for e in frame.meta["event_id"].tolist()
        }
        ages = frame.batch(0, frame.num_rows).sequence_ages
        assert (ages > 0).all(), f"{name}: a history entry is not strictly before its event"
    # Validation events see clicks from the training period (their past), so their histories are not empty.
    assert (frames.valid.batch(0, frames.valid.num_rows).sequences.lengths() > 0).any()


def test_early_stopping_restores_the_best_validation_epoch(small_log, split, tmp_path, monkeypatch):
    frames, _, _ = split
    trainer = _trainer(small_log, tmp_path)
    scripted = iter([0.60, 0.70, 0.65, 0.64, 0.99])  # the last one must never be reached (patience 2)
    calls: list[str] = []

    def fake_evaluate(trainer_, frame, task="click"):
        calls.append("test" if frame is frames.test else "valid")
        return {"auc": next(scripted) if frame is frames.valid else 0.5, "log_loss": 0.6, "ne": 0.9}

    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    monkeypatch.setattr(holdout, "evaluate_frame", fake_evaluate)
    result = fit_holdout(
        trainer, frames, max_epochs=5, patience=2, max_train_rows=512,
        on_epoch=lambda record: snapshots.__setitem__(record.epoch, model_state(trainer.model)),
    )  # fmt: skip
    assert result.best_epoch == 1 and result.valid["auc"] == 0.70
    assert [e.epoch for e in result.epochs] == [0, 1, 2, 3]
    assert calls == ["valid"] * 4 + ["test"]  # test is read once, after training
    final = model_state(trainer.model)
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert any(not torch.equal(snapshots[1][k], snapshots[3][k]) for k in final)


def test_a_search_trial_never_reads_the_test_split(small_log, split, tmp_path, monkeypatch):
    frames, _, _ = split
    trainer = _trainer(small_log, tmp_path)
    read: list[str] = []

    def recording_evaluate(trainer_, frame, task="click"):
        read.append("test" if frame is frames.test else "valid")
        return {"auc": 0.6, "log_loss": 0.6, "ne": 0.9}

    monkeypatch.setattr(holdout, "evaluate_frame", recording_evaluate)
    result = fit_holdout(trainer, frames, max_epochs=2, patience=1, max_train_rows=512, score_test=False)
    assert read == ["valid", "valid"] and result.test == {}


def test_training_never_sees_valid_or_test_rows(small_log, split, tmp_path):
    frames, train_end, _ = split
    trainer = _trainer(small_log, tmp_path)
    seen: list[np.ndarray] = []
    original = trainer.train_step

    def recording_step(batch):
        seen.append(batch.meta["event_id"].numpy().copy())
        return original(batch)

    trainer.train_step = recording_step  # type: ignore[method-assign]
    result = fit_holdout(trainer, frames, max_epochs=2, patience=2)
    trained = np.concatenate(seen)
    assert (trained < train_end).all(), "a valid or test event reached train_step"
    assert np.array_equal(
        np.sort(trained), np.sort(np.tile(frames.train.meta["event_id"].numpy(), 2))
    )  # each row once per epoch
    assert 0.5 < result.test["auc"] < 1.0 and len(result.epochs) == 2


def test_overlapping_masks_are_rejected(small_log):
    def overlapping(table):
        everything = np.ones(table.num_rows, dtype=bool)
        return {"train": everything, "valid": everything, "test": ~everything}

    with pytest.raises(ValueError, match="overlap"):
        holdout.split_by_mask(small_log, small_log.spec.features, overlapping)


def test_train_split_labels_are_as_observed_when_training_starts(split, small_log):
    """Train conversions count only if they happened before the split's last event; valid and test
    are scored on matured labels."""
    frames, _, _ = split
    table = small_log.read_all(["event_id", "ts", "conversion", "conversion_delay_s"])
    by_id = {name: table.column(name).to_numpy(zero_copy_only=False) for name in ("event_id", "ts", "conversion")}
    conversion_time = by_id["ts"] + table.column("conversion_delay_s").fill_null(np.inf).to_numpy().astype(np.float64)
    position = {int(e): i for i, e in enumerate(by_id["event_id"])}
    train_cutoff = int(frames.train.meta["ts"].max()) + 1
    for name in ("train", "valid", "test"):
        frame = getattr(frames, name)
        rows = np.array([position[int(e)] for e in frame.meta["event_id"]])
        matured = by_id["conversion"][rows]
        got = frame.labels["conversion"].numpy()
        if name == "train":
            np.testing.assert_array_equal(got, matured * (conversion_time[rows] < train_cutoff))
            assert got.sum() < matured.sum(), "no train conversion happens after the split: the test proves nothing"
        else:
            np.testing.assert_array_equal(got, matured)
