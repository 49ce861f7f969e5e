"""Kunlun (Meta, 2026): InterFormer-style blocks rebuilt for compute efficiency.

Per layer i, with X (B, n, d) the non-sequence tokens and S the jagged history:

- weight generation: X_sum = Gate(TokenMLP(X)), num_summary tokens;
- sequence side, CompSkip (`comp_skip=True`): even layers are *global* — GDPA personalized FFN with K, V
  generated from X_sum, then a fresh summary H = HSP(S) (or PMA); odd layers are *local* — sliding-window
  self-attention with ROTE, reusing the previous H. With `comp_skip=False` every layer runs GDPA-FFN,
  sliding-window attention and a fresh pooling;
- global interaction: X <- LayerNorm(X + Wukong([X_sum ‖ H])) back to n tokens; with
  `interaction_tokens="all"`, Wukong([X ‖ X_sum ‖ H]), so the raw tokens also cross pairwise.

Output: [X_sum ‖ H] from a final summary of X and a final pooling of S:
(B, num_summary + num_event_types * num_sequence_tokens, d).

Event-level personalization (`num_event_types > 1`): each history entry's type comes from the sequence's
`types` (filled from the sequence feature that the dataset spec declares as the history's `event_types`,
e.g. the surface of each past click) or from `event_types (N,)` int64 passed to forward; the history is split by type (order kept, still jagged) and each type runs its own sequence tower with its own weights,
its own width (`event_widths`, projected in from d and back out to d) and its own length
(`event_lengths`: each type keeps only its most recent entries), each contributing its own H to the
interaction and the output.

`input_norm=True` LayerNorms the non-sequence tokens and each tower's history on the way in. Embedding
rows start tiny (TorchRec's uniform +-1/sqrt(rows) init: |e| ~ 0.1 at d=8 over a thousand ads) while
every post-norm block adds biases of order 1, so the first blocks pass on a near-constant vector with
each id's identity at a few percent of its norm, and training can sit on a plateau whose length depends
on the dense initialisation. Normalising the tokens removes most of that on logs of a million rows and
more; on small logs it costs accuracy, hence off by default (the measurements are in the README).

`interaction_tokens="all"` feeds the raw non-sequence tokens to the global interaction as well, as
InterFormer's Interaction Arch does with DHEN over [X ‖ S_sum]. With only the summaries, every cross
between two raw features (user x ad) has to pass through the gated n -> num_summary compression first.
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.interactions.base import Interaction
from fxrec.interactions.pooling import build_pooling
from fxrec.interactions.sequence_blocks import GDPAFeedForward, JaggedSelfAttentionBlock
from fxrec.interactions.wukong import WukongBlock
from fxrec.nn.sequence import SequenceTokens
from fxrec.nn.token_mixing import GatedSummary
from fxrec.ops import JaggedPlan, jagged_select


def keep_last(
    values: torch.Tensor, plan: JaggedPlan, ages: torch.Tensor | None, length: int
) -> tuple[torch.Tensor, JaggedPlan, torch.Tensor | None]:
    """Each sequence's most recent `length` entries (histories are oldest first), still jagged."""
    if plan.max_len <= length:
        return values, plan, ages
    keep = plan.positions >= plan.lengths[plan.batch_ids] - length
    values, offsets, ages = jagged_select(keep, values, plan.offsets, ages)
    return values, JaggedPlan(offsets), ages


class KunlunSequenceTower(nn.Module):
    """The sequence side of every layer for one event type: (N, d) jagged -> (N, w) and H (B, m, d).

    The tower runs at its own width w: the history and the summary X_sum are projected d -> w on the way
    in, the pooled H w -> d on the way out (identity when w = d).
    """

    def __init__(
        self,
        dim: int,
        width: int,
        num_summary: int,
        num_heads: int,
        num_layers: int,
        num_sequence_tokens: int,
        pooling: str,
        seed_multiplier: int,
        pooling_rank: int,
        ffn_hidden: int,
        gdpa_activation: str,
        gdpa_scale: float | None,
        window: int | None,
        comp_skip: bool,
        rotary: str,
        input_norm: bool,
        pooling_residual: bool,
    ):
        super().__init__()
        self.is_global = [not comp_skip or i % 2 == 0 for i in range(num_layers)]
        has_attention = [not comp_skip or i % 2 == 1 for i in range(num_layers)]

        def pool() -> nn.Module:
            return build_pooling(
                pooling, width, num_sequence_tokens, num_heads, seed_multiplier, pooling_rank, pooling_residual
            )

        def project(a: int, b: int) -> nn.Module:
            return nn.Identity() if a == b else nn.Linear(a, b)

        self.input_norm = nn.LayerNorm(dim) if input_norm else nn.Identity()
        self.values_in, self.summary_in, self.pooled_out = (
            project(dim, width),
            project(dim, width),
            project(width, dim),
        )

        # ModuleDicts keyed by layer index: CompSkip layers own only the parts they run.
        self.ffn = nn.ModuleDict(
            {
                str(i): GDPAFeedForward(
                    width, num_summary, num_heads, ffn_hidden, gdpa_activation, gdpa_scale
                )
                for i in range(num_layers)
                if self.is_global[i]
            }
        )
        self.attention = nn.ModuleDict(
            {
                str(i): JaggedSelfAttentionBlock(width, num_heads, window=window, rotary=rotary)
                for i in range(num_layers)
                if has_attention[i]
            }
        )
        self.pool = nn.ModuleDict({str(i): pool() for i in range(num_layers) if self.is_global[i]})
        self.final_pool = pool()

    def layer(
        self,
        i: int,
        values: torch.Tensor,
        x_sum: torch.Tensor,
        plan: JaggedPlan,
        ages: torch.Tensor | None,
        max_len: int,
        cached: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(i)
        if key in self.ffn:
            values = self.ffn[key](values, self.summary_in(x_sum), plan, max_len)
        if key in self.attention:
            values = self.attention[key](values, plan, ages)
        if key in self.pool:
            return values, self.pooled_out(self.pool[key](values, plan))
        assert cached is not None, "a local layer needs an earlier global layer's summary"
        return values, cached


class Kunlun(Interaction):
    """Tokens (B, n, d) + jagged history (N, d) -> (B, l, d), l = num_summary + T * num_sequence_tokens.

    T = num_event_types (1 unless event-level personalization is on).

    `rotary`: "time" (ROTE, angle from log(1 + age); falls back to positions when ages are missing),
    "position" (RoPE) or "none". `window=None` means full attention in the local layers.
    `gdpa_scale=None` scales GDPA by 1 / sequence.max_len.
    `pooling_residual`: HSP's form, Z = seeds + MHA(Norm(seeds), S, S) (True) or the paper's
    Z = MHA(Norm(seeds), S, S) (False); see `HierarchicalSeedPooling`.
    `interaction_tokens`: what the global interaction crosses, "summary" ([X_sum ‖ H]) or "all"
    ([X ‖ X_sum ‖ H]; see the module docstring).
    Event types come with the history (`SequenceTokens.types`): the dataset spec's `event_types` names the
    sequence feature whose value is each entry's type (type = table row - 1, so a feature of cardinality
    T + 1 gives types 0..T-1); the towers split on it.

    Example::

        model = Kunlun(num_tokens=6, dim=16, num_layers=2, window=4)
        seq = SequenceTokens(torch.randn(5, 16), torch.tensor([0, 0, 1, 5]), torch.rand(5) * 1e4, max_len=8)
        model(torch.randn(3, 6, 16), seq).shape  # (3, 8, 16)
    """

    sequence_aware = True

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_layers: int = 2,
        num_heads: int = 2,
        num_summary: int = 4,
        num_sequence_tokens: int = 4,
        pooling: str = "hsp",
        seed_multiplier: int = 4,
        pooling_rank: int = 2,
        pooling_residual: bool = True,
        ffn_hidden: int = 64,
        gdpa_activation: str = "silu",
        gdpa_scale: float | None = None,
        window: int | None = 32,
        comp_skip: bool = True,
        rotary: str = "time",
        num_event_types: int = 1,
        event_widths: list[int] | None = None,
        event_lengths: list[int | None] | None = None,
        interaction_hidden: int = 128,
        input_norm: bool = False,
        interaction_tokens: str = "summary",
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError("Kunlun needs num_layers >= 1")
        if interaction_tokens not in ("summary", "all"):
            raise ValueError(f"interaction_tokens must be 'summary' or 'all', got {interaction_tokens!r}")
        widths = list(event_widths) if event_widths is not None else [dim] * num_event_types
        lengths = list(event_lengths) if event_lengths is not None else [None] * num_event_types
        if len(widths) != num_event_types or len(lengths) != num_event_types:
            raise ValueError(
                f"event_widths ({widths}) and event_lengths ({lengths}) need one entry per event type "
                f"(num_event_types={num_event_types})"
            )
        if any(w % num_heads for w in widths) or any(n is not None and n < 1 for n in lengths):
            raise ValueError(f"event widths must be multiples of num_heads={num_heads} and lengths >= 1")
        self.num_layers = num_layers
        self.num_event_types = num_event_types
        self.event_lengths = lengths
        self.towers = nn.ModuleList(
            KunlunSequenceTower(
                dim,
                width,
                num_summary,
                num_heads,
                num_layers,
                num_sequence_tokens,
                pooling,
                seed_multiplier,
                pooling_rank,
                ffn_hidden,
                gdpa_activation,
                gdpa_scale,
                window,
                comp_skip,
                rotary,
                input_norm,
                pooling_residual,
            )
            for width in widths
        )
        summary_tokens = num_summary + num_event_types * num_sequence_tokens
        self.summaries = nn.ModuleList(
            GatedSummary(num_tokens, num_summary, hidden=[max(num_tokens, num_summary)])
            for _ in range(num_layers + 1)
        )
        self.raw_tokens_interact = interaction_tokens == "all"
        interaction_in = summary_tokens + (num_tokens if self.raw_tokens_interact else 0)
        self.interactions = nn.ModuleList(
            WukongBlock(interaction_in, num_tokens, dim, hidden=interaction_hidden) for _ in range(num_layers)
        )
        self.token_norm = nn.LayerNorm(dim) if input_norm else nn.Identity()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers))
        self.num_outputs = summary_tokens

    def split(self, sequence: SequenceTokens, event_types: torch.Tensor | None):
        """One (values, ages, plan, max_len) per event type, each still jagged over the same B examples and
        cut to the type's own length."""
        streams = []
        for t, (values, ages, plan) in enumerate(self._by_type(sequence, event_types)):
            length = self.event_lengths[t]
            if length is not None:
                values, plan, ages = keep_last(values, plan, ages, length)
            streams.append(
                (values, ages, plan, sequence.max_len if length is None else min(length, sequence.max_len))
            )
        return streams

    def _by_type(self, sequence: SequenceTokens, event_types: torch.Tensor | None):
        offsets = sequence.offsets.long()
        if self.num_event_types == 1:
            return [(sequence.values, sequence.ages, JaggedPlan(offsets))]
        event_types = sequence.types if event_types is None else event_types
        if event_types is None or event_types.shape[0] != sequence.values.shape[0]:
            raise ValueError(
                f"Kunlun with num_event_types={self.num_event_types} needs event types: one int64 type id "
                "per history entry (declare them in the dataset spec: `event_types: <feature>` on the history feature)"
            )
        if event_types.numel() and int(event_types.max()) >= self.num_event_types:
            raise ValueError(
                f"event type {int(event_types.max())} out of range for num_event_types={self.num_event_types}"
            )
        parts = []
        for t in range(self.num_event_types):
            values, type_offsets, ages = jagged_select(
                event_types == t, sequence.values, offsets, sequence.ages
            )
            parts.append((values, ages, JaggedPlan(type_offsets)))
        return parts

    def forward(
        self,
        tokens: torch.Tensor,
        sequence: SequenceTokens | None = None,
        event_types: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if sequence is None:
            raise ValueError("Kunlun is sequence-aware: pass the jagged history as `sequence`")
        streams = self.split(sequence, event_types)
        values = [
            tower.values_in(tower.input_norm(v))
            for tower, (v, _, _, _) in zip(self.towers, streams, strict=True)
        ]
        cached: list[torch.Tensor | None] = [None] * self.num_event_types
        x = self.token_norm(tokens)
        for i in range(self.num_layers):
            x_sum = self.summaries[i](x)  # (B, num_summary, d): the weights the GDPA-FFN is generated from
            for t, (tower, (_, ages, plan, max_len)) in enumerate(zip(self.towers, streams, strict=True)):
                values[t], cached[t] = tower.layer(i, values[t], x_sum, plan, ages, max_len, cached[t])
            z = torch.cat([x, x_sum, *cached] if self.raw_tokens_interact else [x_sum, *cached], dim=1)
            x = self.norms[i](x + self.interactions[i](z))
        pooled = [
            tower.pooled_out(tower.final_pool(v, plan))
            for tower, v, (_, _, plan, _) in zip(self.towers, values, streams, strict=True)
        ]
        return torch.cat([self.summaries[-1](x), *pooled], dim=1)
