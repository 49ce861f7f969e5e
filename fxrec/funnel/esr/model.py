"""EarlyStageRanker: a two-tower multi-task model whose heads combine exactly as the final stage's value.

    user tower (per request, cacheable)  ─┐
                                          ├─ per task t: logit_t = <P_t u, Q_t a> + p_t(u) + q_t(a) + b_t
    ad tower (per ad version, cacheable) ─┘

Each tower embeds its id features (a multi-valued or history feature: the mean of its entries, 0 being
padding), adds its dense features, and runs an MLP: the towers are the bottom every head shares. A
head is a dot product of per-task projections of the two vectors plus a per-side bias, so a request
costs one user-tower pass, each ad version one ad-tower pass (both cacheable), and each (request, ad)
pair a few small projections and dot products.

Heads: `click` P(click | impression), `conversion` P(conversion | click) (post-click, trained on the
impression log as pCTR x pCVR), `hide` P(hide | impression). `score(u, a, bid)` is
`fxrec.funnel.value.value` of the heads; a model without a head scores it as absent (p_hide = 0, or
the single-task combination `SeparateRankers`).

`save(dir)` writes `esr.pt` (the state_dict) and `esr.json` (the constructor arguments, the tasks and
training notes); `EarlyStageRanker.load(dir)` rebuilds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxrec.funnel.value import HIDE_PENALTY, value

TASKS = ("click", "conversion", "hide")
WEIGHTS_FILE, CARD_FILE = "esr.pt", "esr.json"


@dataclass
class TowerInputs:
    """One tower's plain feature tensors for B rows.

    ids:   {feature: (B, W) int64 table rows}; W = 1 for a single-valued feature, the padded width for a
           multi-valued one or a history; row 0 is missing / padding
    dense: (B, D) float32
    """

    ids: dict[str, torch.Tensor]
    dense: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.dense.shape[0])

    def take(self, rows: torch.Tensor) -> TowerInputs:
        return TowerInputs(
            {k: v.index_select(0, rows) for k, v in self.ids.items()}, self.dense.index_select(0, rows)
        )

    @staticmethod
    def cat(parts: list[TowerInputs]) -> TowerInputs:
        """Rows of several inputs one after the other (widths padded with 0 to the widest)."""
        keys = list(parts[0].ids)
        ids = {}
        for key in keys:
            width = max(p.ids[key].shape[1] for p in parts)
            ids[key] = torch.cat(
                [nn.functional.pad(p.ids[key], (0, width - p.ids[key].shape[1])) for p in parts]
            )
        return TowerInputs(ids, torch.cat([p.dense for p in parts]))


class Tower(nn.Module):
    """Id features (mean-pooled over their width, 0 = padding) and dense features -> MLP -> (B, out)."""

    def __init__(self, features: dict[str, str], dense: int, dim: int, hidden: list[int], out: int):
        super().__init__()
        self.features = dict(features)  # feature -> table name (the towers share the tables)
        layers: list[nn.Module] = []
        width = len(features) * dim + dense
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, out))
        self.mlp = nn.Sequential(*layers)
        self.dense_norm = nn.LayerNorm(dense) if dense else None

    def forward(self, inputs: TowerInputs, tables: nn.ModuleDict) -> torch.Tensor:
        parts = []
        for name, table in self.features.items():
            rows = inputs.ids[name]
            vectors = tables[table](rows)  # (B, W, dim); row 0 (padding) is the zero vector
            count = (rows > 0).sum(1, keepdim=True).clamp_min(1).to(vectors.dtype)
            parts.append(vectors.sum(1) / count)
        if self.dense_norm is not None:
            parts.append(self.dense_norm(inputs.dense))
        return self.mlp(torch.cat(parts, dim=1))


class EarlyStageRanker(nn.Module):
    """Two towers, a shared bottom, one head per task of `tasks` (some of click, conversion, hide).

    tables:   {table: rows} embedding tables (row 0: missing/padding)
    user:     {feature: table} the user tower's id features (user, request context, histories)
    ad:       {feature: table} the ad tower's id features
    user_dense, ad_dense: the towers' dense widths
    """

    def __init__(
        self,
        tables: dict[str, int],
        user: dict[str, str],
        ad: dict[str, str],
        user_dense: int = 0,
        ad_dense: int = 0,
        tasks: list[str] | tuple[str, ...] = TASKS,
        dim: int = 16,
        hidden: list[int] | tuple[int, ...] = (128,),
        out: int = 64,
        head_dim: int = 32,
        hide_penalty: float = HIDE_PENALTY,
    ):
        super().__init__()
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ValueError(f"EarlyStageRanker: tasks must be some of {list(TASKS)}; got {list(tasks)}")
        self.arguments: dict[str, Any] = dict(
            tables=dict(tables), user=dict(user), ad=dict(ad), user_dense=user_dense, ad_dense=ad_dense,
            tasks=list(tasks), dim=dim, hidden=list(hidden), out=out, head_dim=head_dim, hide_penalty=hide_penalty,
        )  # fmt: skip
        self.tasks = list(tasks)
        self.hide_penalty = hide_penalty
        self.head_dim = head_dim
        self.tables = nn.ModuleDict(
            {name: nn.Embedding(rows, dim, padding_idx=0) for name, rows in tables.items()}
        )
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[0].zero_()
        # the towers share the tables: a history of ad ids reads the ad tower's item_id rows
        self.user_tower = Tower(user, user_dense, dim, list(hidden), out)
        self.ad_tower = Tower(ad, ad_dense, dim, list(hidden), out)
        per_task = len(self.tasks) * (head_dim + 1)
        self.user_head = nn.Linear(out, per_task)
        self.ad_head = nn.Linear(out, per_task, bias=False)
        self.bias = nn.Parameter(torch.zeros(len(self.tasks)))
        self.notes: dict[str, Any] = {}  # what it was trained on (written to its card)

    # -- the towers: cacheable ---------------------------------------------------------------------
    def user_vectors(self, inputs: TowerInputs) -> torch.Tensor:
        """(B, out) one vector per request: cache it for the request's every candidate."""
        return self.user_tower(inputs, self.tables)

    def ad_vectors(self, inputs: TowerInputs) -> torch.Tensor:
        """(N, out) one vector per ad version: cache it until the ad's features change."""
        return self.ad_tower(inputs, self.tables)

    # -- the heads: per (request, ad) pair ---------------------------------------------------------
    def logits(self, u: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """{task: logit} for user vectors `u` and ad vectors `a` that broadcast against each other
        ((B, out) with (B, out), or (1, out) with (N, out))."""
        h, t = self.head_dim, len(self.tasks)
        pu = self.user_head(u).unflatten(-1, (t, h + 1))
        pa = self.ad_head(a).unflatten(-1, (t, h + 1))
        logits = (pu[..., :h] * pa[..., :h]).sum(-1) + pu[..., h] + pa[..., h] + self.bias
        return {task: logits[..., i] for i, task in enumerate(self.tasks)}

    def heads(self, u: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """{task: probability}: click P(click), conversion P(conversion | click), hide P(hide)."""
        return {task: torch.sigmoid(logit) for task, logit in self.logits(u, a).items()}

    def score(self, u: torch.Tensor, a: torch.Tensor, bid: torch.Tensor) -> torch.Tensor:
        """The value formula of the heads: value(bid, p_click, p_conversion, p_hide, hide_penalty);
        an absent head counts as p = 1 for click and conversion (a single-task model's own ranking),
        0 for hide."""
        return score_of(self.heads(u, a), bid, self.hide_penalty)

    # -- save / load ----------------------------------------------------------------------------
    def save(self, directory: Path | str) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / WEIGHTS_FILE)
        card = {"kind": "EarlyStageRanker", "arguments": self.arguments, "notes": self.notes}
        (directory / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> EarlyStageRanker:
        directory = Path(directory)
        card = json.loads((directory / CARD_FILE).read_text())
        model = cls(**card["arguments"])
        model.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        model.notes = card.get("notes", {})
        return model.eval()


def score_of(
    probs: dict[str, torch.Tensor], bid: torch.Tensor, hide_penalty: float = HIDE_PENALTY
) -> torch.Tensor:
    """value() of whichever heads `probs` has (click and conversion absent: 1, hide absent: 0)."""
    one = torch.ones((), dtype=bid.dtype)
    return value(
        bid,
        probs.get("click", one),
        probs.get("conversion", one),
        probs.get("hide", torch.zeros((), dtype=bid.dtype)),
        hide_penalty,
    )


class SeparateRankers(nn.Module):
    """The single-task baseline: one EarlyStageRanker per task, their heads combined by the same
    formula. `user_vectors` / `ad_vectors` return every model's vectors side by side (the towers a
    system would run per request and per ad: one per model)."""

    def __init__(self, models: dict[str, EarlyStageRanker], hide_penalty: float = HIDE_PENALTY):
        super().__init__()
        for task, model in models.items():
            if model.tasks != [task]:
                raise ValueError(
                    f"SeparateRankers: the {task!r} model must have the one task {task!r}, has {model.tasks}"
                )
        self.models = nn.ModuleDict(models)
        self.tasks = list(models)
        self.hide_penalty = hide_penalty
        self._widths = [m.arguments["out"] for m in models.values()]

    def user_vectors(self, inputs: TowerInputs) -> torch.Tensor:
        return torch.cat([m.user_vectors(inputs) for m in self.models.values()], dim=-1)

    def ad_vectors(self, inputs: TowerInputs) -> torch.Tensor:
        return torch.cat([m.ad_vectors(inputs) for m in self.models.values()], dim=-1)

    def heads(self, u: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for (task, model), us, as_ in zip(
            self.models.items(), u.split(self._widths, -1), a.split(self._widths, -1), strict=True
        ):
            out[task] = model.heads(us, as_)[task]
        return out

    def score(self, u: torch.Tensor, a: torch.Tensor, bid: torch.Tensor) -> torch.Tensor:
        return score_of(self.heads(u, a), bid, self.hide_penalty)
