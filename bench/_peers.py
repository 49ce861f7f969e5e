"""Peer-library adapters for bench/quality_peers.py: DeepCTR-Torch DCN and DIN on fxrec's own rows.

The peers read exactly the features fxrec's models read: the table rows fxrec hashed each id to
(row 0 = missing / padding), the genres list, the dense columns and the same leak-free history
(`hist_<source>`, the user's last L clicks before the event), all taken out of the same
`EventFrame`s fxrec trains on. DIN attends over `hist_item_id` with `item_id` as the query (and
`hist_advertiser_id` / `advertiser_id` where the log has them), sharing their embedding tables.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass

import numpy as np
import torch

# isort: off
# torchrec must load before deepctr_torch: DeepCTR imports TensorFlow, whose LLVM aborts the process
# ("Option 'bitcode-mdindex-threshold' registered more than once") if it loads first.
import torchrec  # noqa: F401
from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
from deepctr_torch.models import DCN, DIN

# isort: on

from fxrec.data.batches import EventFrame
from fxrec.data.schema import DatasetSpec, FeatureKind, FeatureSpec
from fxrec.metrics import auc, log_loss

PEER_MODELS = ("deepctr_dcn", "deepctr_din")


@dataclass
class PeerData:
    inputs: dict[str, np.ndarray]  # feature name -> (N,) ids / floats, or (N, L) padded ids
    labels: np.ndarray  # (N,) float


def frame_to_peer(
    frame: EventFrame, features: list[FeatureSpec], lengths: dict[str, int], task: str = "click"
) -> PeerData:
    """The rows of `frame` as DeepCTR inputs; multi-valued and sequence features padded to `lengths`."""
    batch = frame.batch(0, frame.num_rows)
    sparse = batch.sparse.to_dict()
    sequences = batch.sequences.to_dict() if batch.sequences is not None else {}
    inputs: dict[str, np.ndarray] = {}
    dense_index = {name: i for i, name in enumerate(frame.dense_keys)}
    for feature in features:
        if feature.kind is FeatureKind.sparse:
            inputs[feature.name] = sparse[feature.name].values().numpy()
        elif feature.kind is FeatureKind.dense:
            inputs[feature.name] = batch.dense[:, dense_index[feature.name]].numpy()
        else:
            jagged = sparse[feature.name] if feature.kind is FeatureKind.multi else sequences[feature.name]
            if feature.kind is FeatureKind.sequence:
                # fxrec histories are oldest first and hold the most recent L; keep the most recent.
                padded = jagged.to_padded_dense(desired_length=None, padding_value=0)
                inputs[feature.name] = _right_align_to(padded, jagged.lengths(), lengths[feature.name])
                inputs[f"{feature.name}_length"] = np.minimum(jagged.lengths().numpy(), lengths[feature.name])
            else:
                inputs[feature.name] = jagged.to_padded_dense(
                    desired_length=lengths[feature.name], padding_value=0
                ).numpy()
    return PeerData(inputs=inputs, labels=batch.labels[task].numpy())


def _right_align_to(padded: torch.Tensor, lengths: torch.Tensor, length: int) -> np.ndarray:
    """(N, T) left-aligned jagged rows -> (N, length), keeping each row's last `length` entries, left-aligned."""
    out = np.zeros((padded.shape[0], length), dtype=np.int64)
    values, counts = padded.numpy(), lengths.numpy()
    for row in np.flatnonzero(counts):
        keep = values[row, max(0, counts[row] - length) : counts[row]]
        out[row, : len(keep)] = keep
    return out


def max_lengths(frames: list[EventFrame], features: list[FeatureSpec], history_length: int) -> dict[str, int]:
    """Padding length per multi-valued feature (the longest list seen) and per sequence (L)."""
    lengths: dict[str, int] = {}
    for feature in features:
        if feature.kind is FeatureKind.sequence:
            lengths[feature.name] = history_length
        elif feature.kind is FeatureKind.multi:
            longest = 1
            for frame in frames:
                jagged = frame.batch(0, frame.num_rows).sparse.to_dict()[feature.name]
                longest = max(longest, int(jagged.lengths().max()) if jagged.lengths().numel() else 1)
            lengths[feature.name] = longest
    return lengths


def feature_columns(
    spec: DatasetSpec, features: list[FeatureSpec], dim: int, lengths: dict[str, int]
) -> list:
    """DeepCTR columns mirroring fxrec's tables: histories share their source's table."""
    columns: list = []
    for feature in features:
        vocabulary = spec.feature(feature.table_name).cardinality or 2
        if feature.kind is FeatureKind.sparse:
            columns.append(SparseFeat(feature.name, vocabulary_size=vocabulary, embedding_dim=dim))
        elif feature.kind is FeatureKind.dense:
            columns.append(DenseFeat(feature.name, 1))
        else:
            table = feature.table_name
            inner = SparseFeat(
                feature.name, vocabulary_size=vocabulary, embedding_dim=dim, embedding_name=table
            )
            # DIN needs each history's length; genres are mean-pooled with zero padding masked.
            length_name = f"{feature.name}_length" if feature.kind is FeatureKind.sequence else None
            columns.append(
                VarLenSparseFeat(
                    inner, maxlen=lengths[feature.name], combiner="mean", length_name=length_name
                )
            )
    return columns


def behavior_features(features: list[FeatureSpec]) -> list[str]:
    """DIN's query features: the sources of `hist_<source>` sequences that are also candidate features."""
    names = {f.name for f in features}
    return [
        f.source
        for f in features
        if f.kind is FeatureKind.sequence and f.source in names and f.name == f"hist_{f.source}"
    ]


def build_peer(
    name: str, columns: list, features: list[FeatureSpec], seed: int, hidden: tuple[int, ...]
) -> torch.nn.Module:
    if name == "deepctr_dcn":
        # DCN-M (matrix cross, i.e. DCNv2), two cross layers, the deep tower in parallel.
        return DCN(
            columns,
            columns,
            cross_num=2,
            cross_parameterization="matrix",
            dnn_hidden_units=hidden,
            seed=seed,
            device="cpu",
        )
    if name == "deepctr_din":
        return DIN(columns, behavior_features(features), dnn_hidden_units=hidden, seed=seed, device="cpu")
    raise ValueError(f"unknown peer {name!r}; known: {PEER_MODELS}")


def fit_peer(
    name: str,
    columns: list,
    features: list[FeatureSpec],
    train: PeerData,
    valid: PeerData,
    test: PeerData,
    seed: int,
    batch_size: int,
    lr: float,
    max_epochs: int,
    patience: int,
    hidden: tuple[int, ...] = (128, 64),
) -> dict:
    """DeepCTR's own fit(), one epoch at a time; the best validation-AUC epoch is restored and tested."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_peer(name, columns, features, seed, hidden)
    model.compile(torch.optim.Adam(model.parameters(), lr=lr), "binary_crossentropy")
    names = [c.name for c in columns] + [c.length_name for c in columns if getattr(c, "length_name", None)]
    best_auc, best_state, best_epoch, stale, curve = -np.inf, None, -1, 0, []
    for epoch in range(max_epochs):
        with contextlib.redirect_stdout(io.StringIO()):  # DeepCTR prints its device and sample counts
            model.fit(
                {k: train.inputs[k] for k in names},
                train.labels,
                batch_size=batch_size,
                epochs=1,
                verbose=0,
                shuffle=True,
            )
        probs = model.predict({k: valid.inputs[k] for k in names}, batch_size=4096).reshape(-1)
        valid_auc = auc(valid.labels, probs)
        curve.append(valid_auc)
        if valid_auc > best_auc:
            best_auc, best_state, best_epoch, stale = valid_auc, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    probs = np.clip(
        model.predict({k: test.inputs[k] for k in names}, batch_size=4096).reshape(-1), 1e-7, 1 - 1e-7
    )
    return {
        "best_epoch": best_epoch,
        "valid_auc": float(best_auc),
        "valid_curve": [float(v) for v in curve],
        "test_auc": float(auc(test.labels, probs)),
        "test_log_loss": float(log_loss(test.labels, probs)),
    }
