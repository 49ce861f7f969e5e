"""RankingModel: the one model shape behind every FM and VM in fxrec.

    SparseArch  : KJT            -> (B, n_s, d) tokens [+ jagged history]
    DenseArch   : (B, D) floats  -> (B, 1, d) token
    Interaction : (B, n, d)      -> (B, l, d)          (DCNv2, DHEN, InterFormer, Kunlun, ...)
    TaskHeads   : (B, l*d)       -> {task: (B,) logits}

An FM and a VM differ only in config: features, surfaces, widths, interaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from fxrec.config import HEADS_CONFIGS, INTERACTION_CONFIGS, ModelConfig, VMConfig
from fxrec.config_types import Block
from fxrec.data.batches import Batch
from fxrec.data.eventlog import EventLog
from fxrec.data.schema import DatasetSpec, FeatureKind, FeatureSpec
from fxrec.interactions.base import SequenceTokens
from fxrec.interactions.registry import build_interaction
from fxrec.models.heads import TaskHeads
from fxrec.nn.embeddings import SparseArch
from fxrec.nn.mlp import MLP
from fxrec.train.checkpoint import load
from fxrec.transfer.base import TransferChannel
from fxrec.transfer.registry import build_channels
from fxrec.transfer.sum import UserTower
from fxrec.transfer.tae import TargetAttention


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
    """features -> tokens -> interaction -> heads. `forward(batch) -> ModelOutput`.

    Optional FM parts (see fxrec.transfer): `user_tower` compresses the user-side tokens into one user
    embedding (SUM), `target_attention` lets the candidate attend over the user's jagged history (TAE);
    both outputs become tokens of the interaction and appear in `representations` ("user", "tae").
    Optional VM parts: `channels` (TransferChannel modules) add tokens and loss terms.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        features: list[FeatureSpec],
        tasks: list[str],
        embedding_dim: int = 16,
        dense_layers: list[int] | None = None,
        interaction: Block | None = None,
        heads: Block | None = None,
        embedding_lr: float = 0.05,
        fused_embeddings: bool = True,
        min_count: int = 0,
        user_tower: Block | None = None,
        target_attention: Block | None = None,
        channels: list[TransferChannel] | None = None,
    ):
        super().__init__()
        # Blocks are typed configs (fxrec.config: InteractionConfig, HeadsConfig, UserTowerConfig, ...).
        interaction = interaction or INTERACTION_CONFIGS["dcnv2"]()
        sequence_aware = interaction.target.sequence_aware
        self.features = [f.name for f in features]
        self.tasks = list(tasks)
        has_history = any(f.kind is FeatureKind.sequence for f in features)
        if target_attention is not None and not has_history:
            raise ValueError("target_attention needs a sequence (history) feature among the model's features")
        self.sparse_arch = SparseArch(
            spec,
            features,
            embedding_dim,
            jagged_sequences=sequence_aware or target_attention is not None,
            fused=fused_embeddings,
            embedding_lr=embedding_lr,
            min_count=min_count,
        )
        # A jagged history that the interaction does not read itself is mean-pooled into one token.
        self.pool_history = self.sparse_arch.jagged_sequences and not sequence_aware and has_history
        token_names = self.sparse_arch.token_names + (["history"] if self.pool_history else [])
        dense_names = [f.name for f in features if f.kind is FeatureKind.dense]

        self.user_tower: UserTower | None = None
        user_tokens: list[int] = []
        user_dense: list[int] = []
        if user_tower is not None:
            wanted = user_tower.features
            sequence_names = {f.name for f in features if f.kind is FeatureKind.sequence}
            names = [("history" if self.pool_history and n in sequence_names else n) for n in wanted]
            unknown = [n for n in names if n not in token_names and n not in dense_names]
            if unknown:
                raise ValueError(f"user_tower features {unknown} are not features of this model ({self.features})")
            user_tokens = sorted({token_names.index(n) for n in names if n in token_names})
            user_dense = [dense_names.index(n) for n in names if n in dense_names]
            self.user_tower = UserTower(len(user_tokens), embedding_dim, len(user_dense), **user_tower.kwargs())
            self.user_projection = nn.Linear(self.user_tower.dim, embedding_dim)
        self.register_buffer("_user_tokens", torch.tensor(user_tokens, dtype=torch.int64), persistent=False)
        self.register_buffer("_user_dense", torch.tensor(user_dense, dtype=torch.int64), persistent=False)
        other_tokens = [i for i in range(len(token_names)) if i not in set(user_tokens)]
        other_dense = [i for i in range(len(dense_names)) if i not in set(user_dense)]
        self.register_buffer("_other_tokens", torch.tensor(other_tokens, dtype=torch.int64), persistent=False)
        self.register_buffer("_other_dense", torch.tensor(other_dense, dtype=torch.int64), persistent=False)

        self.target_attention: TargetAttention | None = None
        if target_attention is not None:
            query = target_attention.query
            missing = [n for n in query if n not in token_names]
            if missing:
                raise ValueError(f"target_attention query features {missing} are not sparse features of this model")
            self.register_buffer("_query_tokens", torch.tensor([token_names.index(n) for n in query]), persistent=False)
            self.target_attention = TargetAttention(embedding_dim, **target_attention.kwargs())

        self.dense_arch = DenseArch(len(other_dense), dense_layers or [64], embedding_dim) if other_dense else None
        self.channels = nn.ModuleList(channels or [])
        num_tokens = (
            len(other_tokens)
            + (1 if self.user_tower is not None else 0)
            + (1 if self.target_attention is not None else 0)
            + (1 if self.dense_arch is not None else 0)
            + sum(c.num_tokens for c in self.channels)
        )
        self.interaction = build_interaction(interaction.name, num_tokens=num_tokens, dim=embedding_dim, **interaction.kwargs())
        if getattr(self.interaction, "num_event_types", 1) > 1 and self.sparse_arch.type_feature is None:
            raise ValueError(
                f"interaction {interaction.name!r} with num_event_types > 1 needs each history entry's event type: "
                "declare it in the dataset spec (`event_types: <feature>` on the history feature) and give the "
                "model that feature"
            )
        top_features = self.interaction.num_outputs * embedding_dim
        self.heads = TaskHeads(top_features, self.tasks, **(heads or HEADS_CONFIGS["shared_bottom"]()).kwargs())
        for channel in self.channels:
            channel.build(top_features)

    def tokens(self, batch: Batch) -> tuple[torch.Tensor, SequenceTokens | None, dict[str, torch.Tensor]]:
        """(B, n, d) interaction inputs, the jagged history (if kept jagged), FM representations."""
        tokens, sequence = self._sparse_tokens(batch)
        representations: dict[str, torch.Tensor] = {}
        parts = [tokens.index_select(1, self._other_tokens) if self.user_tower is not None else tokens]
        if self.user_tower is not None:
            user = self._user_tower(tokens, batch)
            representations["user"] = user
            parts.append(self.user_projection(user).unsqueeze(1))
        if self.target_attention is not None:
            assert sequence is not None
            candidate = tokens.index_select(1, self._query_tokens).mean(dim=1)
            tae = self.target_attention(candidate, sequence)
            representations["tae"] = tae
            parts.append(tae.unsqueeze(1))
        if self.dense_arch is not None:
            dense = batch.dense if self.user_tower is None else batch.dense.index_select(1, self._other_dense)
            parts.append(self.dense_arch(dense))
        own = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        extra = [channel.tokens(batch, own) for channel in self.channels if channel.num_tokens]
        return (torch.cat([own, *extra], dim=1) if extra else own), sequence, representations

    def forward(self, batch: Batch) -> ModelOutput:
        tokens, sequence, representations = self.tokens(batch)  # (B, n, d)
        if self.interaction.sequence_aware:
            out = self.interaction(tokens, sequence)
        else:
            out = self.interaction(tokens)
        top = out.reshape(out.shape[0], -1)  # (B, l*d)
        representations["top"] = top
        return ModelOutput(logits=self.heads(top), representations=representations)

    def _sparse_tokens(self, batch: Batch) -> tuple[torch.Tensor, SequenceTokens | None]:
        tokens, sequence = self.sparse_arch(batch.sparse, batch.sequences, batch.sequence_ages)
        if self.pool_history:
            assert sequence is not None
            pooled = torch.segment_reduce(sequence.values, "mean", lengths=sequence.lengths, unsafe=True, initial=0.0)
            tokens = torch.cat([tokens, pooled.unsqueeze(1)], dim=1)
        return tokens, sequence

    def user_embedding(self, batch: Batch) -> torch.Tensor:
        """(B, d_u) the SUM user embedding; only the batch's user-side features matter."""
        if self.user_tower is None:
            raise ValueError("this model has no user_tower; add `user_tower:` to its config")
        return self._user_tower(self._sparse_tokens(batch)[0], batch)

    def _user_tower(self, tokens: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The user tower on the user-side tokens (B, n_u, d) and user dense features (B, D_u)."""
        assert self.user_tower is not None
        return self.user_tower(tokens.index_select(1, self._user_tokens), batch.dense.index_select(1, self._user_dense))

    def fused_optimizer(self) -> torch.optim.Optimizer | None:
        return self.sparse_arch.fused_optimizer()


def build_model(
    config: ModelConfig,
    spec: DatasetSpec,
    embedding_lr: float = 0.05,
    fm_dims: dict[str, int] | None = None,
    embedding_optimizer: str = "rowwise_adagrad",
) -> RankingModel:
    """A RankingModel from its config. VMs with channels need `fm_dims`, the published FM's widths.

    `embedding_optimizer` is TrainConfig's: row-wise AdaGrad runs fused inside the embedding bags;
    anything else (Adam) needs plain tables whose rows the trainer's optimizer updates.
    """
    features = spec.select(config.features, config.role)
    tasks = config.tasks or spec.tasks
    vm = isinstance(config, VMConfig)
    channels = build_channels(config.channels if vm else [], config.embedding_dim, tasks, fm_dims or {})
    return RankingModel(
        spec,
        features,
        tasks=tasks,
        embedding_dim=config.embedding_dim,
        dense_layers=config.dense_layers,
        interaction=config.interaction,
        heads=config.heads,
        embedding_lr=embedding_lr,
        fused_embeddings=embedding_optimizer == "rowwise_adagrad",
        min_count=config.min_count,
        user_tower=None if vm else config.user_tower,
        target_attention=None if vm else config.target_attention,
        channels=channels,
    )


MODEL_CARD = "model.yaml"


def save_model_card(
    model_dir: Path,
    config: ModelConfig,
    log: EventLog,
    embedding_lr: float,
    fm_dims: dict[str, int],
    embedding_optimizer: str = "rowwise_adagrad",
) -> None:
    """What `load_model` needs to rebuild this model: its config, the log's spec and the FM widths."""
    model_dir.mkdir(parents=True, exist_ok=True)
    card = {
        "config": config.model_dump(mode="json"),
        "events": str(log.path.resolve()),
        "embedding_lr": embedding_lr,
        "embedding_optimizer": embedding_optimizer,
        "fm_dims": dict(fm_dims),
    }
    (model_dir / MODEL_CARD).write_text(yaml.safe_dump(card, sort_keys=False))


def load_model(model_dir: Path | str, weights: str = "model.pt") -> tuple[RankingModel, ModelConfig, DatasetSpec]:
    """A trained model from its directory (runs/<run>/models/<name>), weights loaded, in eval mode."""
    model_dir = Path(model_dir)
    card_path = model_dir / MODEL_CARD
    if not card_path.exists():
        raise FileNotFoundError(f"{model_dir} has no {MODEL_CARD}; is it a model trained by fxrec?")
    card = yaml.safe_load(card_path.read_text())
    config = ModelConfig.model_validate(card["config"])
    spec = DatasetSpec.load(Path(card["events"]) / "spec.yaml")
    model = build_model(
        config,
        spec,
        embedding_lr=card["embedding_lr"],
        fm_dims=card["fm_dims"],
        embedding_optimizer=card.get("embedding_optimizer", "rowwise_adagrad"),  # cards before the option
    )
    weights_path = model_dir / weights
    if not weights_path.exists():
        raise FileNotFoundError(f"{weights_path} does not exist; has training finished?")
    model.load_state_dict(load(weights_path))
    model.eval()
    return model, config, spec
