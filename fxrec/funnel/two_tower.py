"""A two-tower retrieval model trained on the same clicks: the standard learned baseline to ALURE.

User tower: the user's id embedding plus the mean embedding of their last clicks before the day, through
an MLP; ad tower: the ad's id embedding through a linear layer. Trained with an in-batch softmax over
clicks (logQ-corrected for popular ads), progressively: serving day t, it first trains on the clicks of
the days it has not seen yet (all of them before t), so it too knows only the past.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fxrec.data.eventlog import day_start_ts
from fxrec.funnel.engagements import DAY, Engagements
from fxrec.funnel.lists import index_of, recent_items, top_items


class _Towers(nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int):
        super().__init__()
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items + 1, dim, padding_idx=num_items)  # the last row: no click
        self.user_mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.item_out = nn.Linear(dim, dim)
        self.pad = num_items
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=0.05)

    def users(self, user: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        mask = history != self.pad
        pooled = (self.item(history) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return nn.functional.normalize(self.user_mlp(torch.cat([self.user(user), pooled], dim=1)), dim=1)

    def items(self, item: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.item_out(self.item(item)), dim=1)


class TwoTowerRetriever:
    """Two towers over user and ad ids (`num_users`, `num_items`: the id cardinalities)."""

    name = "two_tower"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 32,
        history_length: int = 20,
        epochs: int = 2,
        batch_size: int = 512,
        lr: float = 0.01,
        temperature: float = 0.05,
        item_window_days: float = 7.0,
        seed: int = 0,
    ):
        torch.manual_seed(seed)
        self.model = _Towers(num_users, num_items, dim)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.history_length, self.epochs, self.batch_size = history_length, epochs, batch_size
        self.temperature, self.item_window_days = temperature, item_window_days
        self.rng = np.random.default_rng(seed)
        self.trained_until = np.iinfo(np.int64).min
        self.history = Engagements.of(np.zeros(0), np.zeros(0), np.zeros(0))
        self.items = np.zeros(0, np.int64)

    def _histories(self, history: Engagements, users: np.ndarray) -> torch.Tensor:
        items = recent_items(history, users, self.history_length)
        return torch.from_numpy(np.where(items >= 0, items, self.model.pad))

    def prepare(self, day: str, history: Engagements) -> None:
        now = day_start_ts(day)
        new = history.between(self.trained_until, now)
        if len(new):
            first = day_start_ts(np.datetime_as_string(np.datetime64(int(new.ts[0]), "s"), unit="D"))
            for start in range(first, now, DAY):  # day by day, each with the clicks before it as histories
                clicks = new.between(start, start + DAY)
                if len(clicks):
                    self._train(
                        clicks, self._histories(history.between(np.iinfo(np.int64).min, start), clicks.user)
                    )
            self.trained_until = now
        self.history = history
        self.items = np.unique(history.between(now - int(self.item_window_days * DAY), now).item)

    def _train(self, clicks: Engagements, histories: torch.Tensor) -> None:
        self.model.train()
        items, counts = np.unique(clicks.item, return_counts=True)
        log_q = torch.from_numpy(
            np.log(counts[index_of(clicks.item, items)] / len(clicks)).astype(np.float32)
        )
        user, item = torch.from_numpy(clicks.user), torch.from_numpy(clicks.item)
        for _ in range(self.epochs):
            order = torch.from_numpy(self.rng.permutation(len(clicks)))
            for start in range(0, len(order), self.batch_size):
                b = order[start : start + self.batch_size]
                u, v = self.model.users(user[b], histories[b]), self.model.items(item[b])
                logits = u @ v.T / self.temperature - log_q[b][None, :]
                same = (
                    item[b][None, :] == item[b][:, None]
                )  # another row's positive for the same ad is no negative
                logits = logits.masked_fill(same & ~torch.eye(len(b), dtype=torch.bool), -torch.inf)
                loss = nn.functional.cross_entropy(logits, torch.arange(len(b)))
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()

    @torch.no_grad()
    def retrieve(self, users: np.ndarray, k: int) -> np.ndarray:
        self.model.eval()
        u = self.model.users(torch.from_numpy(users.astype(np.int64)), self._histories(self.history, users))
        v = self.model.items(torch.from_numpy(self.items))
        return top_items(u @ v.T + 2.0, self.items, k)  # cosine + 2 > 0: every scored ad counts
