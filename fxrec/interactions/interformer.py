"""InterFormer (Zeng et al., 2024): non-sequence tokens and a jagged history, with two-way information flow.

Each layer runs three arches side by side on (X^l, S^l):

- Cross Arch (summarisation): X_sum = Gate(TokenMLP(X)) with n_sum = num_cls tokens;
  S_sum = Gate([S_CLS ‖ PMA(S) ‖ S_recent]), num_cls + num_pma + num_recent tokens;
- Interaction Arch: X^{l+1} = LayerNorm(X + MLP(DHEN([X ‖ S_sum]))), DHEN back to n tokens;
- Sequence Arch: S^{l+1} = MHA_RoPE(PFFN(X_sum, S)), PFFN(s) = X_sum^T (W s) (the paper's per-example d x d
  matrix X_sum^T W, applied without materialising it), both as residual + LayerNorm blocks.

Before layer 1 the layer's X_sum is prepended to every history as its CLS tokens, so even an empty
history has num_cls entries. After the last layer a final Cross Arch summarises (X^L, S^L) and the output
is [X_sum ‖ S_sum]: (B, 2*num_cls + num_pma + num_recent, d).
"""

from __future__ import annotations

import torch
from torch import nn

from fxrec.interactions.base import Interaction
from fxrec.interactions.dhen import DHEN
from fxrec.interactions.masknet import MaskNetMerge
from fxrec.interactions.pooling import PMA
from fxrec.interactions.sequence_blocks import JaggedSelfAttentionBlock
from fxrec.nn.mlp import MLP
from fxrec.nn.sequence import SequenceTokens
from fxrec.nn.token_mixing import GatedSummary
from fxrec.ops import JaggedPlan, jagged_first, jagged_last, jagged_prepend


class CrossArch(nn.Module):
    """Summaries of both sides: X (B, n, d) -> X_sum (B, c, d); S jagged -> S_sum (B, c + p + r, d)."""

    def __init__(
        self, num_tokens: int, dim: int, num_heads: int, num_cls: int, num_pma: int, num_recent: int
    ):
        super().__init__()
        self.num_cls, self.num_recent = num_cls, num_recent
        self.summarise = GatedSummary(num_tokens, num_cls, hidden=[max(num_tokens, num_cls)])
        self.pma = PMA(dim, num_pma, num_heads)
        self.sequence_gate = GatedSummary(num_cls + num_pma + num_recent, num_cls + num_pma + num_recent)

    def summarise_sequence(self, values: torch.Tensor, plan: JaggedPlan) -> torch.Tensor:
        cls = jagged_first(values, plan.offsets, self.num_cls)
        recent = jagged_last(values, plan.offsets, self.num_recent, skip_first=self.num_cls)
        return self.sequence_gate(torch.cat([cls, self.pma(values, plan), recent], dim=1))


class PersonalizedFFN(nn.Module):
    """s <- LayerNorm(s + X_sum^T (W s)): each example's d x d FFN weight is X_sum^T W, W: (n_sum, d)."""

    def __init__(self, dim: int, num_summary: int):
        super().__init__()
        self.weight = nn.Linear(dim, num_summary, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, values: torch.Tensor, summary: torch.Tensor, plan: JaggedPlan) -> torch.Tensor:
        # (N, c) coefficients mix the example's c summary tokens; gathering (N, c, d) is cheap for small c.
        mixed = (
            torch.einsum("nc,ncd->nd", self.weight(values), summary[plan.batch_ids]) / summary.shape[1] ** 0.5
        )
        return self.norm(values + mixed)


class InterFormerLayer(nn.Module):
    """One InterFormer layer: (X (B, n, d), S jagged) -> (X' (B, n, d), S' jagged, X_sum (B, c, d))."""

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_heads: int,
        num_cls: int,
        num_pma: int,
        num_recent: int,
        interaction_modules: list[str],
        interaction_layers: int,
        rotary: str,
        activation: str,
    ):
        super().__init__()
        self.cross = CrossArch(num_tokens, dim, num_heads, num_cls, num_pma, num_recent)
        self.interaction = DHEN(
            num_tokens + num_cls + num_pma + num_recent,
            dim,
            modules=interaction_modules,
            num_layers=interaction_layers,
            output_tokens=num_tokens,
            num_heads=num_heads,
        )
        self.interaction_mlp = MLP(dim, [2 * dim, dim], activation=activation, activate_last=False)
        self.interaction_norm = nn.LayerNorm(dim)
        self.pffn = PersonalizedFFN(dim, num_cls)
        self.attention = JaggedSelfAttentionBlock(dim, num_heads, rotary=rotary)

    def forward(
        self,
        x: torch.Tensor,
        x_sum: torch.Tensor,
        values: torch.Tensor,
        plan: JaggedPlan,
        ages: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s_sum = self.cross.summarise_sequence(values, plan)
        x_next = self.interaction_norm(
            x + self.interaction_mlp(self.interaction(torch.cat([x, s_sum], dim=1)))
        )
        values_next = self.attention(self.pffn(values, x_sum, plan), plan, ages)
        return x_next, values_next


class InterFormer(Interaction):
    """Tokens (B, n, d) + jagged history (N, d) -> (B, 2*num_cls + num_pma + num_recent, d).

    `num_sequences > 1` expects `sequence.values` of width num_sequences*d (k aligned behaviour sequences
    concatenated per position) and merges them with `MaskNetMerge` first. `rotary` is "position" (RoPE,
    the paper) or "time" (log-age rotary, Kunlun's ROTE; CLS tokens get age 0).

    Example::

        model = InterFormer(num_tokens=6, dim=16, num_layers=2)
        seq = SequenceTokens(torch.randn(5, 16), torch.tensor([0, 0, 1, 5]), None, max_len=8)
        model(torch.randn(3, 6, 16), seq).shape  # (3, 12, 16)
    """

    sequence_aware = True

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_layers: int = 2,
        num_heads: int = 2,
        num_cls: int = 4,
        num_pma: int = 2,
        num_recent: int = 2,
        interaction_modules: list[str] | None = None,
        interaction_layers: int = 1,
        rotary: str = "position",
        num_sequences: int = 1,
        activation: str = "silu",
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError("InterFormer needs num_layers >= 1")
        if num_cls < 1 or num_pma < 0 or num_recent < 0:
            raise ValueError(
                f"InterFormer needs num_cls >= 1 (the non-sequence summary and the CLS tokens) and "
                f"num_pma, num_recent >= 0; got num_cls={num_cls}, num_pma={num_pma}, num_recent={num_recent}"
            )
        modules = list(interaction_modules) if interaction_modules is not None else ["dot", "dcn"]
        self.num_cls = num_cls
        self.merge = MaskNetMerge(num_sequences, dim) if num_sequences > 1 else None
        self.layers = nn.ModuleList(
            InterFormerLayer(
                num_tokens,
                dim,
                num_heads,
                num_cls,
                num_pma,
                num_recent,
                modules,
                interaction_layers,
                rotary,
                activation,
            )
            for _ in range(num_layers)
        )
        self.final_cross = CrossArch(num_tokens, dim, num_heads, num_cls, num_pma, num_recent)
        self.num_outputs = 2 * num_cls + num_pma + num_recent

    def forward(self, tokens: torch.Tensor, sequence: SequenceTokens | None = None) -> torch.Tensor:
        if sequence is None:
            raise ValueError("InterFormer is sequence-aware: pass the jagged history as `sequence`")
        values = self.merge(sequence.values) if self.merge is not None else sequence.values
        # CLS tokens: the first layer's non-sequence summary leads every history (age 0: "now").
        x_sum = self.layers[0].cross.summarise(tokens)  # (B, c, d)
        values, offsets, is_cls = jagged_prepend(x_sum, values, sequence.offsets.long())
        ages = None
        if sequence.ages is not None:
            ages = sequence.ages.new_zeros(values.shape[0]).masked_scatter(~is_cls, sequence.ages)
        plan = JaggedPlan(offsets)  # built once: every layer keeps the lengths
        x = tokens
        for i, layer in enumerate(self.layers):
            if i > 0:
                x_sum = layer.cross.summarise(x)
            x, values = layer(x, x_sum, values, plan, ages)
        x_sum = self.final_cross.summarise(x)
        s_sum = self.final_cross.summarise_sequence(values, plan)
        return torch.cat([x_sum, s_sum], dim=1)
