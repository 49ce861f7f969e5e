"""RankingModel: the one model shape behind every FM and VM in fxrec.

    SparseArch  : KJT            -> (B, n_s, d) tokens [+ jagged history]
    DenseArch   : (B, D) floats  -> (B, 1, d) token
    Interaction : (B, n, d)      -> (B, l, d)          (DCNv2, DHEN, InterFormer, Kunlun, ...)
    TaskHeads   : (B, l*d)       -> {task: (B,) logits}

An FM and a VM differ only in the modules they are given: features, widths, interaction, and the FM's
user tower and target attention or the VM's transfer channels. The model takes every part already
built, as TorchRec's DLRM does; `fxrec.factory.build_model` builds them from a config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fxrec.data.batches import Batch
from fxrec.interactions.base import Interaction
from fxrec.models.channel import Channel
from fxrec.models.heads import TaskHeads
from fxrec.models.output import ModelOutput
from fxrec.nn.embeddings import SparseArch
from fxrec.nn.mlp import MLP
from fxrec.nn.sequence import SequenceTokens
from fxrec.nn.target_attention import TargetAttention
from fxrec.nn.user_tower import UserTower


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

    Tokens, in order: the sparse tokens (less those the user tower takes), the pooled history when
    `pool_history` (a jagged history the interaction does not read itself), the user tower's token,
    the target attention's token, the dense token, then each channel's tokens.

    Optional FM parts: `user_tower` compresses the user-side tokens (`user_tokens`, indices into the
    sparse tokens [+ pooled history]) and dense features (`user_dense`) into one user embedding (SUM),
    projected to a token by `user_projection`; `target_attention` lets the candidate (the mean of the
    `query_tokens`) attend over the user's jagged history (TAE). Both outputs appear in
    `representations` ("user", "tae"). Optional VM parts: `channels` add tokens (their loss terms and
    data are the trainer's business).
    """

    def __init__(
        self,
        features: Sequence[str],
        tasks: Sequence[str],
        sparse_arch: SparseArch,
        interaction: Interaction,
        heads: TaskHeads,
        dense_arch: DenseArch | None = None,
        num_dense: int = 0,
        pool_history: bool = False,
        user_tower: UserTower | None = None,
        user_projection: nn.Module | None = None,
        user_tokens: Sequence[int] = (),
        user_dense: Sequence[int] = (),
        target_attention: TargetAttention | None = None,
        query_tokens: Sequence[int] = (),
        channels: Sequence[Channel] = (),
    ):
        super().__init__()
        if (user_tower is None) != (user_projection is None):
            raise ValueError("a user tower needs its projection to a token, and only then")
        if target_attention is not None and not query_tokens:
            raise ValueError("target attention needs the candidate's query tokens")
        self.features = list(features)
        self.tasks = list(tasks)
        self.sparse_arch = sparse_arch
        self.pool_history = pool_history
        num_tokens = len(sparse_arch.token_names) + (1 if pool_history else 0)
        self.user_tower = user_tower
        if user_projection is not None:
            self.user_projection = user_projection
        self.target_attention = target_attention
        self.dense_arch = dense_arch
        self.channels = nn.ModuleList(channels)  # type: ignore[arg-type]
        self.interaction = interaction
        self.heads = heads
        other_tokens = [i for i in range(num_tokens) if i not in set(user_tokens)]
        other_dense = [i for i in range(num_dense) if i not in set(user_dense)]
        for name, values in (
            ("_user_tokens", user_tokens),
            ("_user_dense", user_dense),
            ("_other_tokens", other_tokens),
            ("_other_dense", other_dense),
            ("_query_tokens", query_tokens),
        ):
            self.register_buffer(name, torch.tensor(list(values), dtype=torch.int64), persistent=False)

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
            pooled = torch.segment_reduce(
                sequence.values, "mean", lengths=sequence.lengths, unsafe=True, initial=0.0
            )
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
        return self.user_tower(
            tokens.index_select(1, self._user_tokens), batch.dense.index_select(1, self._user_dense)
        )

    def fused_optimizer(self) -> torch.optim.Optimizer | None:
        return self.sparse_arch.fused_optimizer()
