"""SparseArch: sparse, multi-valued and sequence features -> embedding tokens, through TorchRec.

Two layouts, chosen by whether the interaction models sequences itself:

- pooled (`jagged_sequences=False`): one `FusedEmbeddingBagCollection`; every feature, the
  history included, is pooled (mean) into one token. The fused TBE kernel applies row-wise
  AdaGrad inside backward, touching only the rows a batch used.
- jagged (`jagged_sequences=True`): one `EmbeddingCollection` (unpooled); non-sequence features
  become tokens as above, the history stays jagged (`SequenceTokens`), one token per past event
  (the sum of that event's sequence-feature embeddings). TorchRec's fused collection of this kind
  is CUDA-only, so on CPU its rows are updated by the trainer's `RowWiseAdagrad`.

Features that name a shared `table` (e.g. `hist_item_id` -> `item_id`) use one table, so the
history and the candidate live in the same embedding space. Both layouts are TorchRec modules,
so DistributedModelParallel can shard them unchanged.
"""

from __future__ import annotations

import torch
import torchrec.optim as trec_optim
from torch import nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
    PoolingType,
)
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

from fxrec.data.schema import DatasetSpec, FeatureKind, FeatureSpec
from fxrec.interactions.base import SequenceTokens


def _tables(spec: DatasetSpec, features: list[FeatureSpec]) -> dict[str, tuple[int, list[str]]]:
    tables: dict[str, tuple[int, list[str]]] = {}
    for feature in features:
        if feature.kind is FeatureKind.dense:
            continue
        name = feature.table_name
        cardinality = spec.feature(name).cardinality or 2
        tables.setdefault(name, (cardinality, []))[1].append(feature.name)
    return tables


class SparseArch(nn.Module):
    """KJTs of sparse/multi and sequence features -> tokens (B, n, d) and optional SequenceTokens.

    Example::

        arch = SparseArch(spec, spec.features, dim=16, jagged_sequences=False)
        tokens, _ = arch(batch.sparse, batch.sequences, batch.sequence_ages)  # (B, n, 16), None
    """

    def __init__(
        self,
        spec: DatasetSpec,
        features: list[FeatureSpec],
        dim: int,
        jagged_sequences: bool = False,
        fused: bool = True,
        embedding_lr: float = 0.05,
    ):
        super().__init__()
        self.dim = dim
        self.jagged_sequences = jagged_sequences
        self.max_len = spec.history_length
        self.sparse_keys = [f.name for f in features if f.kind in (FeatureKind.sparse, FeatureKind.multi)]
        self.multi_keys = {f.name for f in features if f.kind is FeatureKind.multi}
        self.sequence_keys = [f.name for f in features if f.kind is FeatureKind.sequence]
        tables = _tables(spec, features)
        self.num_tokens = len(self.sparse_keys) + (0 if jagged_sequences else len(self.sequence_keys))
        self.fused = fused and not jagged_sequences
        if jagged_sequences:
            configs = [EmbeddingConfig(name=t, embedding_dim=dim, num_embeddings=c, feature_names=f) for t, (c, f) in tables.items()]
            self.collection: nn.Module = EmbeddingCollection(tables=configs)
        else:
            bag_configs = [
                EmbeddingBagConfig(name=t, embedding_dim=dim, num_embeddings=c, feature_names=f, pooling=PoolingType.MEAN)
                for t, (c, f) in tables.items()
            ]
            if self.fused:
                self.collection = FusedEmbeddingBagCollection(
                    tables=bag_configs,
                    optimizer_type=trec_optim.RowWiseAdagrad,
                    optimizer_kwargs={"lr": embedding_lr, "eps": 1e-8},
                    device=torch.device("cpu"),
                )
            else:
                self.collection = EmbeddingBagCollection(tables=bag_configs)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Small embeddings train stably with the dense layers' default init; row 0 (missing) starts at 0.
        for weight in self._weights():
            weight.uniform_(-0.05, 0.05)
            weight[0].zero_()

    def _weights(self) -> list[torch.Tensor]:
        if self.fused:
            return list(self.collection.state_dict().values())
        return [p for p in self.collection.parameters()]

    def fused_optimizer(self) -> torch.optim.Optimizer | None:
        return self.collection.fused_optimizer() if self.fused else None

    def forward(
        self, sparse: KeyedJaggedTensor, sequences: KeyedJaggedTensor | None, ages: torch.Tensor | None
    ) -> tuple[torch.Tensor, SequenceTokens | None]:
        batch = sparse.stride()
        if not self.jagged_sequences:
            kjt = sparse if sequences is None or not self.sequence_keys else KeyedJaggedTensor.concat([sparse, sequences])
            pooled = self.collection(kjt)
            return pooled.values().reshape(batch, -1, self.dim), None
        kjt = sparse if sequences is None or not self.sequence_keys else KeyedJaggedTensor.concat([sparse, sequences])
        embedded = self.collection(kjt)
        tokens = []
        for key in self.sparse_keys:
            jagged = embedded[key]
            if key in self.multi_keys:
                tokens.append(torch.segment_reduce(jagged.values(), "mean", lengths=jagged.lengths(), unsafe=True, initial=0.0))
            else:
                tokens.append(jagged.values().reshape(batch, self.dim))
        sequence = None
        if self.sequence_keys and sequences is not None:
            values = torch.stack([embedded[k].values() for k in self.sequence_keys]).sum(0)
            offsets = embedded[self.sequence_keys[0]].offsets()
            sequence = SequenceTokens(values=values, offsets=offsets.long(), ages=ages, max_len=self.max_len)
        stacked = torch.stack(tokens, dim=1) if tokens else torch.zeros(batch, 0, self.dim)
        return stacked, sequence
