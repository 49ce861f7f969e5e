"""Epoch-based training on a fixed train / valid / test split, with early stopping on validation AUC.

The progressive trainer (`trainer.py`) is fxrec's main loop; benchmarks against peer libraries need
the other protocol the CTR literature uses (BARS): a fixed chronological split, several epochs over
the training rows, the epoch with the best validation AUC kept, and the test rows scored once.

Labels too are as the system observes them: the train split's delayed labels (conversions) count only
if they happened before training starts, at the end of the training period; valid and test are
scored against matured labels.

Histories stay leak-free: they are computed once over the whole log in time order, with the same
`HistoryTracker` day walk as `fxrec.data.reader.iter_frames`, and only then are rows selected into
the splits. Every event's history therefore holds the user's clicks strictly before it, from any
split (a test event sees clicks from the training period, as it would in production), and never
anything later. Histories are never recomputed inside a split.

Example::

    frames = split_by_event_id(log, features, train_end, valid_end)
    trainer = Trainer(model, TrainConfig(batch_size=1024), model_dir, progress=False)
    result = fit_holdout(trainer, frames, max_epochs=10, patience=2)
    result.test  # {"auc": ..., "log_loss": ..., "ne": ...} of the best-validation epoch
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from fxrec.data.batches import EventFrame
from fxrec.data.eventlog import EventLog
from fxrec.data.history import HistoryTracker, _gather_ranges
from fxrec.data.labels import delay_columns, observed_frame
from fxrec.data.schema import FeatureKind, FeatureSpec
from fxrec.metrics import auc, log_loss, ne
from fxrec.models.checkpoint import model_state
from fxrec.train.trainer import LabelTally, Trainer

SPLITS = ("train", "valid", "test")
Jagged = tuple[np.ndarray, np.ndarray]  # (offsets (N+1,), values)


@dataclass
class SplitFrames:
    """The three splits as EventFrames, rows in time order within each."""

    train: EventFrame
    valid: EventFrame
    test: EventFrame

    def sizes(self) -> dict[str, int]:
        return {name: getattr(self, name).num_rows for name in SPLITS}


@dataclass
class EpochRecord:
    epoch: int
    train_examples: int
    valid: dict[str, float]


@dataclass
class HoldoutResult:
    """What `fit_holdout` found: the per-epoch validation curve, the best epoch, its test metrics."""

    best_epoch: int
    epochs: list[EpochRecord] = field(default_factory=list)
    valid: dict[str, float] = field(default_factory=dict)  # metrics of the best epoch
    test: dict[str, float] = field(default_factory=dict)  # the restored best model on the test rows


def log_with_histories(
    log: EventLog, features: list[FeatureSpec]
) -> tuple[pa.Table, dict[str, Jagged] | None]:
    """The whole log in time order plus each event's history, walked day by day as `iter_frames` does."""
    spec = log.spec
    sources = sorted({f.source for f in features if f.kind is FeatureKind.sequence and f.source})
    tracker = HistoryTracker(spec.history_length, sources, spec.history_label) if sources else None
    present = set(log.read_day(log.days[0]).column_names)
    columns = [c for c in dict.fromkeys([*spec.columns(), spec.history_label, *delay_columns(spec)]) if c in present]
    tables: list[pa.Table] = []
    parts: dict[str, list[Jagged]] = {}
    for _, table in log.iter_days(columns):
        tables.append(table)
        if tracker is not None:
            for key, jagged in tracker.attach(table)[1].items():
                parts.setdefault(key, []).append(jagged)
    whole = pa.concat_tables(tables)
    if tracker is None:
        return whole, None
    return whole, {key: _concat_jagged(chunks) for key, chunks in parts.items()}


def _concat_jagged(chunks: list[Jagged]) -> Jagged:
    lengths = np.concatenate([np.diff(offsets) for offsets, _ in chunks])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return offsets, np.concatenate([values for _, values in chunks])


def _select(
    table: pa.Table, history: dict[str, Jagged] | None, rows: np.ndarray
) -> tuple[pa.Table, dict[str, Jagged] | None]:
    selected = table.take(pa.array(rows, type=pa.int64()))
    if history is None:
        return selected, None
    out = {}
    for key, (offsets, values) in history.items():
        lengths = np.diff(offsets)[rows]
        index = _gather_ranges(offsets[:-1][rows], lengths)
        out[key] = (np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), values[index])
    return selected, out


def split_by_mask(
    log: EventLog, features: list[FeatureSpec], assign: Callable[[pa.Table], dict[str, np.ndarray]]
) -> SplitFrames:
    """Splits chosen by boolean row masks over the time-ordered log: `assign(table) -> {split: mask}`.

    Masks must not overlap; rows in no mask are dropped (after their clicks entered later histories).
    The train split's labels are those observed when training starts, just after its last event
    (`fxrec.data.labels`: a conversion after that is a negative); valid and test keep the matured
    labels that evaluation scores against.
    """
    table, history = log_with_histories(log, features)
    masks = assign(table)
    missing = [s for s in SPLITS if s not in masks]
    if missing:
        raise ValueError(f"split masks need keys {list(SPLITS)}; missing {missing}")
    stacked = np.stack([np.asarray(masks[s], dtype=bool) for s in SPLITS])
    if stacked.shape[1] != table.num_rows:
        raise ValueError(f"split masks have {stacked.shape[1]} rows; the log has {table.num_rows}")
    if (stacked.sum(0) > 1).any():
        raise ValueError("split masks overlap: an event may be in only one of train / valid / test")
    frames = {}
    for name, mask in zip(SPLITS, stacked, strict=True):
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            raise ValueError(f"the {name} split is empty")
        selected, selected_history = _select(table, history, rows)
        frames[name] = EventFrame(selected, log.spec, features, selected_history)
    frames["train"] = observed_frame(frames["train"], int(frames["train"].meta["ts"].max()) + 1)
    return SplitFrames(**frames)


def split_by_event_id(
    log: EventLog, features: list[FeatureSpec], train_end: int, valid_end: int
) -> SplitFrames:
    """train: event_id < train_end; valid: train_end <= event_id < valid_end; test: the rest."""
    if not train_end <= valid_end:
        raise ValueError(f"need train_end <= valid_end, got {train_end} > {valid_end}")

    def assign(table: pa.Table) -> dict[str, np.ndarray]:
        ids = table.column("event_id").to_numpy()
        return {
            "train": ids < train_end,
            "valid": (ids >= train_end) & (ids < valid_end),
            "test": ids >= valid_end,
        }

    return split_by_mask(log, features, assign)


def evaluate_frame(trainer: Trainer, frame: EventFrame, task: str | None = None) -> dict[str, float]:
    """AUC, log loss and NE of the trainer's model on every row of `frame`, against its (matured) labels,
    on `task` (default: the model's first task)."""
    task = task or trainer.model.tasks[0]
    probs = trainer.predict(frame)[task]
    labels = frame.labels[task].numpy()
    return {
        "auc": float(auc(labels, probs)),
        "log_loss": float(log_loss(labels, probs)),
        "ne": float(ne(labels, probs)),
    }


def fit_holdout(
    trainer: Trainer,
    frames: SplitFrames,
    max_epochs: int = 10,
    patience: int = 2,
    task: str | None = None,
    max_train_rows: int | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    score_test: bool = True,
) -> HoldoutResult:
    """Train epochs on `frames.train` (shuffled, seeded), keep the best validation-AUC epoch, score test.

    Stops after `patience` epochs without a better validation AUC. The model ends with the best
    epoch's weights restored; `frames.test` is read exactly once, after training has finished, or
    not at all with `score_test=False` (a hyperparameter search's trials; `result.test` stays empty).
    `max_train_rows` caps each epoch (a random subset), for quick runs. Metrics are on `task` (default:
    the model's first task).
    """
    if max_epochs < 1 or patience < 1:
        raise ValueError(f"need max_epochs >= 1 and patience >= 1, got {max_epochs}, {patience}")
    torch.set_num_threads(trainer.config.threads)
    size = trainer.config.batch_size
    rows = frames.train.num_rows if max_train_rows is None else min(max_train_rows, frames.train.num_rows)
    result = HoldoutResult(best_epoch=-1)
    if trainer.step == 0:
        trainer.start_at_base_rates(LabelTally(trainer.model.tasks).add(frames.train), "the training split")
    best_auc, best_state, stale = -np.inf, None, 0
    for epoch in range(max_epochs):
        generator = torch.Generator().manual_seed(trainer.config.seed * 1_000_003 + epoch)
        order = torch.randperm(frames.train.num_rows, generator=generator)[:rows]
        for start in range(0, rows, size):
            trainer.train_step(frames.train.take(order[start : start + size]))
        record = EpochRecord(
            epoch=epoch, train_examples=rows, valid=evaluate_frame(trainer, frames.valid, task)
        )
        result.epochs.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if record.valid["auc"] > best_auc:
            best_auc, best_state, stale = record.valid["auc"], model_state(trainer.model), 0
            result.best_epoch, result.valid = epoch, record.valid
        else:
            stale += 1
            if stale >= patience:
                break
    assert best_state is not None
    trainer.model.load_state_dict(best_state)
    if score_test:
        result.test = evaluate_frame(trainer, frames.test, task)
    return result
