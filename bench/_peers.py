"""Peer-library adapters for bench/quality_peers.py: DeepCTR-Torch and FuxiCTR DCN(v2) and DIN on fxrec's rows.

The peers read exactly the features fxrec's models read: the table rows fxrec hashed each id to
(row 0 = missing / padding), the genres list, the dense columns and the same leak-free history
(`hist_<source>`, the user's last L clicks before the event), all taken out of the same
`EventFrame`s fxrec trains on. DIN attends over `hist_item_id` with `item_id` as the query (and
`hist_advertiser_id` / `advertiser_id` where the log has them), sharing their embedding tables.

- `deepctr_dcn`, `deepctr_din`: DeepCTR-Torch's own model classes, trained by DeepCTR's `fit()`.
- `fuxictr_dcnv2`, `fuxictr_din`: FuxiCTR 2.3.10's layers (`FeatureEmbeddingDict`, `CrossNetV2`,
  `DIN_Attention`, `MLP_Block`) assembled the way FuxiCTR's model_zoo DCNv2 / DIN are, with their
  defaults and FuxiCTR's initialisation. The wheel ships no DCNv2 / DIN model class outside
  model_zoo, whose models need FuxiCTR's CSV -> FeatureMap -> dataloader pipeline; here the
  `FeatureMap` is built in memory from fxrec's spec and the models train in a plain loop
  (`fit_fuxictr`): FuxiCTR's `BaseModel.fit` minus its gradient-norm clipping (10), lr reduction on
  plateau and logging.

Both train with the search's optimiser (`peer_adam`: Adam at one lr, L2 on the embedding tables as
Adam weight decay) and return the restored best-validation model's `predict`; the caller decides
when the test rows are scored.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# isort: off
# torchrec must load before deepctr_torch: DeepCTR imports TensorFlow, whose LLVM aborts the process
# ("Option 'bitcode-mdindex-threshold' registered more than once") if it loads first.
import torchrec  # noqa: F401
from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
from deepctr_torch.models import DCN, DIN
from fuxictr.features import FeatureMap
from fuxictr.pytorch.layers import CrossNetV2, DIN_Attention, FeatureEmbeddingDict, MLP_Block

# isort: on

from fxrec.data.batches import EventFrame
from fxrec.data.schema import DatasetSpec, FeatureKind, FeatureSpec
from fxrec.metrics import auc, log_loss

DEEPCTR_MODELS = ("deepctr_dcn", "deepctr_din")
FUXICTR_MODELS = ("fuxictr_dcnv2", "fuxictr_din")
PEER_MODELS = (*DEEPCTR_MODELS, *FUXICTR_MODELS)


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
    """DeepCTR's model at its defaults, except the shared tower `hidden` and no built-in L2 on the
    embeddings (the search's `embedding_l2` is that knob, as an Adam parameter group: `peer_adam`)."""
    if name == "deepctr_dcn":
        # DCN-M (matrix cross, i.e. DCNv2): the variant is the model compared, not a tuned setting.
        return DCN(
            columns,
            columns,
            cross_parameterization="matrix",
            dnn_hidden_units=hidden,
            l2_reg_embedding=0.0,
            seed=seed,
            device="cpu",
        )
    if name == "deepctr_din":
        return DIN(
            columns,
            behavior_features(features),
            dnn_hidden_units=hidden,
            l2_reg_embedding=0.0,
            seed=seed,
            device="cpu",
        )
    raise ValueError(f"unknown peer {name!r}; known: {PEER_MODELS}")


def peer_adam(model: nn.Module, embeddings: nn.Module, lr: float, embedding_l2: float) -> torch.optim.Adam:
    """Adam at `lr` on every parameter; L2 `embedding_l2` (coupled weight decay) on the embedding
    tables only: the same update as fxrec's Adam embeddings with `embedding_weight_decay`."""
    table_ids = {id(p) for p in embeddings.parameters()}
    rest = [p for p in model.parameters() if id(p) not in table_ids]
    groups = [{"params": list(embeddings.parameters()), "weight_decay": embedding_l2}, {"params": rest}]
    return torch.optim.Adam(groups, lr=lr)


def early_stopped(
    model: torch.nn.Module,
    run_epoch: Callable[[], None],
    predict: Callable[[PeerData], np.ndarray],
    valid: PeerData,
    max_epochs: int,
    patience: int,
) -> dict:
    """Epochs until validation AUC stops improving for `patience` epochs; the best epoch's weights
    are restored (the caller scores test, once, after a search has picked its setting)."""
    best_auc, best_state, best_epoch, stale, curve = -np.inf, None, -1, 0, []
    for epoch in range(max_epochs):
        run_epoch()
        valid_auc = auc(valid.labels, predict(valid))
        curve.append(valid_auc)
        if valid_auc > best_auc:
            best_auc, best_state, best_epoch, stale = valid_auc, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    return {"best_epoch": best_epoch, "valid_auc": float(best_auc), "valid_curve": [float(v) for v in curve]}


def test_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC and log loss of (N,) probabilities, clipped as DeepCTR and FuxiCTR clip theirs."""
    probs = np.clip(probs, 1e-7, 1 - 1e-7)
    return {"test_auc": float(auc(labels, probs)), "test_log_loss": float(log_loss(labels, probs))}


Fitted = tuple[dict, Callable[[PeerData], np.ndarray]]  # (validation record, the restored model's predict)


def fit_peer(
    name: str,
    columns: list,
    features: list[FeatureSpec],
    train: PeerData,
    valid: PeerData,
    seed: int,
    lr: float,
    batch_size: int,
    embedding_l2: float,
    max_epochs: int,
    patience: int,
    hidden: tuple[int, ...],
) -> Fitted:
    """DeepCTR's own fit(), one epoch at a time; the best validation-AUC epoch is restored."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_peer(name, columns, features, seed, hidden)
    model.compile(peer_adam(model, model.embedding_dict, lr, embedding_l2), "binary_crossentropy")
    names = [c.name for c in columns] + [c.length_name for c in columns if getattr(c, "length_name", None)]

    def run_epoch() -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # DeepCTR prints its device and sample counts
            model.fit(
                {k: train.inputs[k] for k in names},
                train.labels,
                batch_size=batch_size,
                epochs=1,
                verbose=0,
                shuffle=True,
            )

    def predict(data: PeerData) -> np.ndarray:
        return model.predict({k: data.inputs[k] for k in names}, batch_size=4096).reshape(-1)

    return early_stopped(model, run_epoch, predict, valid, max_epochs, patience), predict


def fuxictr_feature_map(spec: DatasetSpec, features: list[FeatureSpec], attended: set[str]) -> FeatureMap:
    """FuxiCTR's FeatureMap, in memory, mirroring fxrec's tables (row 0 = padding, histories share tables).

    Multi-valued features and histories outside `attended` are mean-pooled over their non-padding
    entries (FuxiCTR's `MaskedAveragePooling` encoder); `attended` histories stay (B, L, d) for DIN.
    """
    feature_map = FeatureMap("fxrec", data_dir="")
    owners: dict[str, str] = {}  # table -> the feature whose embedding layer the table is
    for feature in features:
        if feature.kind is FeatureKind.dense:
            entry: dict = {"type": "numeric", "source": ""}
        else:
            table = feature.table_name
            entry = {
                "type": "categorical" if feature.kind is FeatureKind.sparse else "sequence",
                "vocab_size": spec.feature(table).cardinality or 2,
                "padding_idx": 0,
                "source": "",
            }
            if table in owners:
                entry["share_embedding"] = owners[table]
            else:
                owners[table] = feature.name
            if feature.kind is not FeatureKind.sparse and feature.name not in attended:
                entry["feature_encoder"] = "layers.MaskedAveragePooling()"
        feature_map.features[feature.name] = entry
    # Shared tables must be declared after their owner: FeatureEmbeddingDict builds them in order.
    order = sorted(feature_map.features, key=lambda n: "share_embedding" in feature_map.features[n])
    feature_map.features = OrderedDict((n, feature_map.features[n]) for n in order)
    feature_map.num_fields = len(order)
    return feature_map


class FuxiDCNv2(nn.Module):
    """FuxiCTR model_zoo DCNv2 at its defaults ("parallel", 3 full-rank cross layers):
    embeddings -> [CrossNetV2 ‖ MLP_Block] -> Linear -> sigmoid."""

    def __init__(self, feature_map: FeatureMap, dim: int, hidden: list[int], cross_layers: int = 3):
        super().__init__()
        self.embedding = FeatureEmbeddingDict(feature_map, dim)
        width = dim * len(feature_map.features)
        self.cross = CrossNetV2(width, cross_layers)
        self.deep = MLP_Block(input_dim=width, hidden_units=hidden, hidden_activations="ReLU")
        self.fc = nn.Linear(width + hidden[-1], 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding.dict2tensor(self.embedding(inputs), flatten_emb=True)  # (B, F*d)
        return torch.sigmoid(self.fc(torch.cat([self.cross(emb), self.deep(emb)], dim=-1))).squeeze(-1)


class FuxiDIN(nn.Module):
    """FuxiCTR model_zoo DIN: DIN_Attention (Dice, no softmax) of the target over the history -> MLP_Block."""

    def __init__(
        self, feature_map: FeatureMap, dim: int, targets: list[str], sequences: list[str], hidden: list[int]
    ):
        super().__init__()
        self.targets, self.sequences, self.dim = targets, sequences, dim
        self.embedding = FeatureEmbeddingDict(feature_map, dim)
        self.attention = DIN_Attention(dim * len(targets), attention_units=[64], hidden_activations="Dice")
        self.dnn = MLP_Block(
            input_dim=dim * len(feature_map.features),
            output_dim=1,
            hidden_units=hidden,
            hidden_activations="ReLU",
            output_activation="Sigmoid",
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(inputs)
        target = torch.cat([emb[f] for f in self.targets], dim=-1)  # (B, k*d)
        history = torch.cat([emb[f] for f in self.sequences], dim=-1)  # (B, L, k*d)
        pooled = self.attention(target, history, inputs[self.sequences[0]] != 0)
        for name, part in zip(self.sequences, pooled.split(self.dim, dim=-1), strict=True):
            emb[name] = part
        return self.dnn(self.embedding.dict2tensor(emb, flatten_emb=True)).squeeze(-1)


def _fuxictr_reset(model: nn.Module) -> None:
    """FuxiCTR's BaseModel.reset_parameters: xavier-normal Linear weights, zero biases, then init_weights()."""
    for module in model.modules():
        if type(module) is nn.Linear:
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                module.bias.data.zero_()
    for module in model.modules():
        if hasattr(module, "init_weights"):
            module.init_weights()


def build_fuxictr(
    name: str,
    spec: DatasetSpec,
    features: list[FeatureSpec],
    dim: int,
    hidden: list[int],
) -> nn.Module:
    if name == "fuxictr_dcnv2":
        model: nn.Module = FuxiDCNv2(fuxictr_feature_map(spec, features, set()), dim, hidden)
    elif name == "fuxictr_din":
        targets = behavior_features(features)
        sequences = [f"hist_{t}" for t in targets]
        model = FuxiDIN(fuxictr_feature_map(spec, features, set(sequences)), dim, targets, sequences, hidden)
    else:
        raise ValueError(f"unknown FuxiCTR peer {name!r}; known: {FUXICTR_MODELS}")
    _fuxictr_reset(model)
    return model


def _predict(
    model: nn.Module, inputs: dict[str, torch.Tensor], rows: int, batch_size: int = 4096
) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = [
            model({k: v[i : i + batch_size] for k, v in inputs.items()}) for i in range(0, rows, batch_size)
        ]
    model.train()
    return torch.cat(out).numpy()


def fit_fuxictr(
    name: str,
    spec: DatasetSpec,
    features: list[FeatureSpec],
    train: PeerData,
    valid: PeerData,
    seed: int,
    dim: int,
    lr: float,
    batch_size: int,
    embedding_l2: float,
    max_epochs: int,
    patience: int,
    hidden: tuple[int, ...],
) -> Fitted:
    """A FuxiCTR-layer model in a plain loop: Adam, BCE, shuffled batches; best validation-AUC epoch restored."""
    torch.manual_seed(seed)
    model = build_fuxictr(name, spec, features, dim, list(hidden))
    optimizer = peer_adam(model, model.embedding, lr, embedding_l2)
    names = [f.name for f in features]

    def tensors(data: PeerData) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(data.inputs[k]) for k in names}

    x_train = tensors(train)
    y_train = torch.as_tensor(train.labels, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)

    def run_epoch() -> None:
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            probs = model({k: v[rows] for k, v in x_train.items()})
            loss = nn.functional.binary_cross_entropy(probs, y_train[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def predict(data: PeerData) -> np.ndarray:
        return _predict(model, tensors(data), len(data.labels))

    return early_stopped(model, run_epoch, predict, valid, max_epochs, patience), predict
