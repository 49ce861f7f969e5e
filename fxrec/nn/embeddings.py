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
so DistributedModelParallel can shard them unchanged (fxrec.dist); a sharded collection's outputs
are put back in table order.
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
from fxrec.nn.admission import FrequencyAdmission
from fxrec.nn.sequence import SequenceTokens


def _tables(spec: DatasetSpec, features: list[FeatureSpec]) -> dict[str, tuple[int, list[str]]]:
    tables: dict[str, tuple[int, list[str]]] = {}
    for feature in features:
        if feature.kind is FeatureKind.dense:
            continue
        name = feature.table_name
        cardinality = spec.feature(name).cardinality or 2
        tables.setdefault(name, (cardinality, []))[1].append(feature.name)
    return tables


def _pooling(feature_names: list[str], single: set[str]) -> PoolingType:
    """MEAN, except SUM for tables whose features all hold exactly one id per event.

    A bag of one id has mean == sum bit for bit (a missing value is row 0, still one id), and FBGEMM's
    CPU TBE runs SUM ~6x faster than MEAN, so single-id tables take the fast kernel.
    """
    return PoolingType.SUM if all(name in single for name in feature_names) else PoolingType.MEAN


class _DirectLookup:
    """A FusedEmbeddingBagCollection's forward without `KJT.to_dict()`: (B, sum of dims) in table order.

    TorchRec's forward splits the KJT into one JaggedTensor per feature and concatenates them again
    per fused group (one group per pooling type) on every batch. Here the KJT is permuted once into
    the groups' feature order (nothing to do when it already is, the usual case), each group's TBE
    gets the slices of values and offsets directly, and the output comes back in table order -- the
    order TorchRec names the outputs, and the order of this module's tokens. The TBE kernels, their
    fused row-wise AdaGrad and the parameters are the collection's own; only the plumbing differs.
    """

    def __init__(self, collection: FusedEmbeddingBagCollection):
        self.modules = list(collection._emb_modules)
        groups = [[f for table in tables for f in table.feature_names] for tables in collection._key_to_tables.values()]
        self.group_sizes = [len(g) for g in groups]
        self.group_order = [f for g in groups for f in g]
        table_order = [f for table in collection.embedding_bag_configs() for f in table.feature_names]
        position = {f: i for i, f in enumerate(self.group_order)}
        order = [position[f] for f in table_order]
        self.to_table_order = None if order == sorted(order) else torch.tensor(order)
        self._permutations: dict[tuple[str, ...], list[int] | None] = {}

    def _permutation(self, keys: list[str]) -> list[int] | None:
        key = tuple(keys)
        if key not in self._permutations:
            missing = sorted(set(self.group_order) - set(keys))
            if missing:
                raise KeyError(f"the batch has no sparse features {missing}; it has {keys}")
            index = {k: i for i, k in enumerate(keys)}
            permutation = [index[f] for f in self.group_order]
            self._permutations[key] = None if permutation == list(range(len(keys))) else permutation
        return self._permutations[key]

    def __call__(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        permutation = self._permutation(kjt.keys())
        if permutation is not None:
            kjt = kjt.permute(permutation)
        batch = kjt.stride()
        lengths, values = kjt.lengths(), kjt.values()
        if len(self.modules) == 1:
            offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
            pooled = self.modules[0](values.int(), offsets.int(), None)
        else:
            value_counts = lengths.view(-1, batch).sum(dim=1).tolist()
            outputs, first = [], 0
            value_start = 0
            for module, size in zip(self.modules, self.group_sizes, strict=True):
                value_end = value_start + int(sum(value_counts[first : first + size]))
                group_lengths = lengths[first * batch : (first + size) * batch]
                offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(group_lengths)
                outputs.append(module(values[value_start:value_end].int(), offsets.int(), None))
                first, value_start = first + size, value_end
            pooled = torch.cat(outputs, dim=1)
        if self.to_table_order is not None:
            dim = pooled.shape[1] // len(self.group_order)
            pooled = pooled.view(batch, -1, dim).index_select(1, self.to_table_order).reshape(batch, -1)
        return pooled


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
        min_count: int = 0,
    ):
        super().__init__()
        self.dim = dim
        self.jagged_sequences = jagged_sequences
        self.max_len = spec.history_length
        self.sparse_keys = [f.name for f in features if f.kind in (FeatureKind.sparse, FeatureKind.multi)]
        self.multi_keys = {f.name for f in features if f.kind is FeatureKind.multi}
        self.sequence_keys = [f.name for f in features if f.kind is FeatureKind.sequence]
        # Each history entry's event type, from the sequence feature that the spec declares as the history's
        # `event_types`: its table row - 1 (row 0, missing, counts as 0). Only a jagged history carries
        # types, and only when the model has that feature too.
        declared = {f.event_types for f in features if f.kind is FeatureKind.sequence} - {None}
        if len(declared) > 1:
            raise ValueError(f"the model's sequence features declare different event_types: {sorted(declared)}")
        type_feature = next(iter(declared), None)
        self.type_feature = type_feature if jagged_sequences and type_feature in self.sequence_keys else None
        tables = _tables(spec, features)
        self.admission = FrequencyAdmission(
            table_rows={t: c for t, (c, _) in tables.items()},
            feature_tables={f: t for t, (_, names) in tables.items() for f in names},
            counted=set(self.sparse_keys),
            min_count=min_count,
        )
        self.num_tokens = len(self.sparse_keys) + (0 if jagged_sequences else len(self.sequence_keys))
        # Which feature each output token is: pooled tokens come in table order (TorchRec's output
        # order), jagged ones in feature order.
        pooled_order = [f for _, names in _tables(spec, features).values() for f in names]
        self.token_names = list(self.sparse_keys) if jagged_sequences else pooled_order
        self.fused = fused and not jagged_sequences
        if jagged_sequences:
            configs = [EmbeddingConfig(name=t, embedding_dim=dim, num_embeddings=c, feature_names=f) for t, (c, f) in tables.items()]
            self.collection: nn.Module = EmbeddingCollection(tables=configs)
        else:
            single = {f.name for f in features if f.kind is FeatureKind.sparse}
            bag_configs = [
                EmbeddingBagConfig(name=t, embedding_dim=dim, num_embeddings=c, feature_names=f, pooling=_pooling(f, single))
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
        self._table_names = list(tables)
        self._direct = _DirectLookup(self.collection) if self.fused else None
        self._output_orders: dict[tuple[str, ...], torch.Tensor | None] = {}
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Small embeddings train stably with the dense layers' default init; row 0 (missing) starts at 0.
        for weight in self._weights():
            weight.uniform_(-0.05, 0.05)
            weight[0].zero_()

    def _weights(self) -> list[torch.Tensor]:
        if self.fused:
            # In table order (not the fused groups' order), so a seed gives the same init whatever the grouping.
            state = self.collection.state_dict()
            return [state[f"embedding_bags.{name}.weight"] for name in self._table_names]
        return [p for p in self.collection.parameters()]

    def _in_table_order(self, pooled) -> torch.Tensor:
        """(B, sum of dims) of a collection's KeyedTensor, in table order (`token_names`).

        A sharded collection (DistributedModelParallel) names its outputs in the order of its shardings
        (data-parallel tables, then table-wise, ...), not the tables' order.
        """
        keys = tuple(pooled.keys())
        if keys not in self._output_orders:
            wanted = self.token_names
            self._output_orders[keys] = None if list(keys) == wanted else torch.tensor([keys.index(k) for k in wanted])
        order, values = self._output_orders[keys], pooled.values()
        if order is None:
            return values
        batch = values.shape[0]
        return values.view(batch, len(order), self.dim).index_select(1, order).reshape(batch, -1)

    def fused_optimizer(self) -> torch.optim.Optimizer | None:
        return self.collection.fused_optimizer() if self.fused else None

    def forward(
        self, sparse: KeyedJaggedTensor, sequences: KeyedJaggedTensor | None, ages: torch.Tensor | None
    ) -> tuple[torch.Tensor, SequenceTokens | None]:
        batch = sparse.stride()
        kjt = sparse if sequences is None or not self.sequence_keys else KeyedJaggedTensor.concat([sparse, sequences])
        kjt = self.admission(kjt)  # one call: every key reads the counts from before this batch
        if not self.jagged_sequences:
            if self._direct is not None and type(self.collection) is FusedEmbeddingBagCollection:
                return self._direct(kjt).reshape(batch, -1, self.dim), None
            return self._in_table_order(self.collection(kjt)).reshape(batch, -1, self.dim), None
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
            types = None
            if self.type_feature is not None:
                types = (sequences[self.type_feature].values().long() - 1).clamp_(min=0)
            sequence = SequenceTokens(
                values=values, offsets=offsets.long(), ages=ages, max_len=self.max_len, types=types
            )
        stacked = torch.stack(tokens, dim=1) if tokens else torch.zeros(batch, 0, self.dim)
        return stacked, sequence
