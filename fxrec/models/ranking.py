"""RankingModel: the one model shape behind every FM and VM in fxrec.

    SparseArch  : KJT            -> (B, n_s, d) tokens [+ jagged history]
    DenseArch   : (B, D) floats  -> (B, 1, d) token
    Interaction : (B, n, d)      -> (B, l, d)          (DCNv2, DHEN, InterFormer, Kunlun, ...)
    TaskHeads   : (B, l*d)       -> {task: (B,) logits}

An FM and a VM differ only in config: features, surfaces, widths, interaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fxrec.config import ModelConfig
from fxrec.data.batches import Batch
from fxrec.data.schema import DatasetSpec, FeatureKind, FeatureSpec
from fxrec.interactions.registry import INTERACTIONS, build_interaction
from fxrec.models.heads import TaskHeads
from fxrec.nn.embeddings import SparseArch
from fxrec.nn.mlp import MLP


@dataclass
class ModelOutput:
    logits: dict[str, torch.Tensor]  # {task: (B,)}
    representations: dict[str, torch.Tensor] = field(default_factory=dict)  # {name: (B, ...)}


class DenseArch(nn.Module):
    """(B, D) dense features -> (B, 1, d): one token, as DLRM's bottom MLP.

    Inputs pass through sign(x)·log1p(|x|) first: counts, prices and ages are heavy-tailed and
    keep growing in a streaming log (an ad's age tomorrow exceeds any age seen today), and raw
    values would make tomorrow's predictions extrapolate.
    """

    def __init__(self, in_features: int, layers: list[int], dim: int):
        super().__init__()
        self.mlp = MLP(in_features, [*layers, dim])

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.sign(dense) * torch.log1p(dense.abs())).unsqueeze(1)


class RankingModel(nn.Module):
    """features -> tokens -> interaction -> heads. `forward(batch) -> ModelOutput`."""

    def __init__(
        self,
        spec: DatasetSpec,
        features: list[FeatureSpec],
        tasks: list[str],
        embedding_dim: int = 16,
        dense_layers: list[int] | None = None,
        interaction: dict[str, Any] | None = None,
        heads: dict[str, Any] | None = None,
        embedding_lr: float = 0.05,
        fused_embeddings: bool = True,
        min_count: int = 0,
    ):
        super().__init__()
        interaction = dict(interaction or {"name": "dcnv2"})
        name = interaction.pop("name")
        if name not in INTERACTIONS:
            raise ValueError(f"unknown interaction {name!r}; known: {sorted(INTERACTIONS)}")
        sequence_aware = INTERACTIONS[name].sequence_aware
        self.features = [f.name for f in features]
        self.tasks = list(tasks)
        self.sparse_arch = SparseArch(
            spec,
            features,
            embedding_dim,
            jagged_sequences=sequence_aware,
            fused=fused_embeddings,
            embedding_lr=embedding_lr,
            min_count=min_count,
        )
        n_dense = sum(f.kind is FeatureKind.dense for f in features)
        self.dense_arch = DenseArch(n_dense, dense_layers or [64], embedding_dim) if n_dense else None
        num_tokens = self.sparse_arch.num_tokens + (1 if self.dense_arch is not None else 0)
        self.interaction = build_interaction(name, num_tokens=num_tokens, dim=embedding_dim, **interaction)
        head_args = dict(heads or {})
        self.heads = TaskHeads(self.interaction.num_outputs * embedding_dim, self.tasks, **head_args)

    def tokens(self, batch: Batch):
        tokens, sequence = self.sparse_arch(batch.sparse, batch.sequences, batch.sequence_ages)
        if self.dense_arch is not None:
            tokens = torch.cat([tokens, self.dense_arch(batch.dense)], dim=1)
        return tokens, sequence

    def forward(self, batch: Batch) -> ModelOutput:
        tokens, sequence = self.tokens(batch)  # (B, n, d)
        if self.interaction.sequence_aware:
            out = self.interaction(tokens, sequence)
        else:
            out = self.interaction(tokens)
        top = out.reshape(out.shape[0], -1)  # (B, l*d)
        return ModelOutput(logits=self.heads(top), representations={"top": top})

    def fused_optimizer(self) -> torch.optim.Optimizer | None:
        return self.sparse_arch.fused_optimizer()


def build_model(config: ModelConfig, spec: DatasetSpec, embedding_lr: float = 0.05) -> RankingModel:
    features = spec.select(config.features, config.role)
    return RankingModel(
        spec,
        features,
        tasks=config.tasks or spec.tasks,
        embedding_dim=config.embedding_dim,
        dense_layers=config.dense_layers,
        interaction=config.interaction,
        heads=config.heads,
        embedding_lr=embedding_lr,
        min_count=config.min_count,
    )
