"""Helpers every retriever shares: users' recent items, click matrices, top-k, and merging lists."""

from __future__ import annotations

import numpy as np
import torch

from fxrec.funnel.engagements import DAY, Engagements


def recent_items(history: Engagements, users: np.ndarray, length: int) -> np.ndarray:
    """(n, length) each user's last `length` clicked items in `history`, newest first, -1 padded."""
    order = np.lexsort((history.ts, history.user))
    u, items = history.user[order], history.item[order]
    end = np.searchsorted(u, users, side="right")
    begin = np.searchsorted(u, users, side="left")
    offsets = end[:, None] - 1 - np.arange(length)[None, :]
    valid = offsets >= begin[:, None]
    return np.where(valid, items[np.maximum(offsets, 0)] if len(items) else -1, -1)


def decay(ts: np.ndarray, now: int, half_life_days: float) -> np.ndarray:
    """Weight of an engagement at `ts` seen at `now`: halves every `half_life_days`."""
    return (0.5 ** ((now - ts) / (half_life_days * DAY))).astype(np.float32)


def index_of(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """Position of each value in the sorted `vocabulary`, -1 where absent."""
    if len(vocabulary) == 0:
        return np.full(len(values), -1, np.int64)
    at = np.minimum(np.searchsorted(vocabulary, values), len(vocabulary) - 1)
    return np.where(vocabulary[at] == values, at, -1)


def top_items(scores: torch.Tensor, items: np.ndarray, k: int) -> np.ndarray:
    """(n, k) the items of the k highest positive scores per row, best first, -1 padded."""
    n = scores.shape[0]
    out = np.full((n, k), -1, np.int64)
    take = min(k, scores.shape[1])
    if take == 0 or n == 0:
        return out
    value, index = scores.topk(take, dim=1)
    chosen = items[index.numpy()]
    out[:, :take] = np.where(value.numpy() > 0, chosen, -1)
    return out


def merge(first: np.ndarray, then: np.ndarray, k: int) -> np.ndarray:
    """(n, k) per row: `first`'s items, then `then`'s ((n, m) or one shared (m,) list) not already in,
    in order, deduplicated, -1 padded."""
    n = len(first)
    then = np.broadcast_to(then, (n, then.shape[-1])) if then.ndim == 1 else then
    both = np.concatenate([first, then], axis=1)
    width = both.shape[1]
    row = np.repeat(np.arange(n), width)
    flat = both.reshape(-1)
    order = np.lexsort((np.tile(np.arange(width), n), flat, row))  # by row, item, then position
    duplicate = np.zeros(len(flat), bool)
    sorted_flat, sorted_row = flat[order], row[order]
    duplicate[order[1:]] = (sorted_flat[1:] == sorted_flat[:-1]) & (sorted_row[1:] == sorted_row[:-1])
    keep = (flat >= 0) & ~duplicate
    rank = np.cumsum(keep.reshape(n, width), axis=1) - 1
    out = np.full((n, k), -1, np.int64)
    sel = keep.reshape(n, width) & (rank < k)
    out[np.nonzero(sel)[0], rank[sel]] = both[sel]
    return out
