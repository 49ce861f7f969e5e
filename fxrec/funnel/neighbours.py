"""The user graph: each user's k most similar users by cosine similarity of their embeddings.

`hnsw_neighbours` (faiss-cpu's HNSW index, approximate) is the embedded default; `exact_neighbours`
(every pair, in blocks) is the reference it is checked against. Both exclude the user itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class UserGraph:
    """Row i: user `users[i]`'s neighbours (indices into `users`, -1 where fewer than k) and similarities."""

    users: np.ndarray  # (n,) int64, sorted
    neighbours: np.ndarray  # (n, k) int64
    similarity: np.ndarray  # (n, k) float32

    def rows_of(self, users: np.ndarray) -> np.ndarray:
        """Row of each user in the graph, -1 for users it does not hold."""
        if len(self.users) == 0:
            return np.full(len(users), -1, np.int64)
        at = np.minimum(np.searchsorted(self.users, users), len(self.users) - 1)
        return np.where(self.users[at] == users, at, -1)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _pad(index: np.ndarray, score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop self matches (already -1) and out-of-range columns, keep the first k per row in order."""
    n = len(index)
    out_index, out_score = np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32)
    valid = index >= 0
    rank = np.cumsum(valid, axis=1) - 1
    keep = valid & (rank < k)
    rows = np.repeat(np.arange(n), keep.sum(axis=1))
    out_index[rows, rank[keep]] = index[keep]
    out_score[rows, rank[keep]] = score[keep]
    return out_index, out_score


def exact_neighbours(vectors: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) indices and cosine similarities of each row's k nearest other rows, by brute force."""
    n = len(vectors)
    if n == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    x = torch.from_numpy(_normalise(vectors))
    take = min(k + 1, n)
    indices, scores = [], []
    for start in range(0, n, block):
        sim = x[start : start + block] @ x.T
        rows = torch.arange(start, min(start + block, n))
        sim[rows - start, rows] = -torch.inf  # never its own neighbour
        score, index = sim.topk(take, dim=1)
        index[torch.isinf(score)] = -1
        indices.append(index.numpy())
        scores.append(score.numpy())
    return _pad(np.concatenate(indices), np.concatenate(scores), k)


def hnsw_neighbours(
    vectors: np.ndarray,
    k: int,
    m: int = 32,
    ef_construction: int = 80,
    ef_search: int | None = None,
    threads: int | None = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) indices and cosine similarities of each row's k approximate nearest other rows (faiss HNSW
    over inner products of unit vectors)."""
    import faiss

    n = len(vectors)
    if n == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    x = _normalise(vectors)
    index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search or max(2 * (k + 1), 64)
    index.add(x)
    score, found = index.search(x, min(k + 1, n))
    found[found == np.arange(n)[:, None]] = -1  # never its own neighbour
    return _pad(found.astype(np.int64), score.astype(np.float32), k)


def build_graph(users: np.ndarray, vectors: np.ndarray, k: int, method: str = "hnsw") -> UserGraph:
    """The user graph over `users` (sorted) by `method`: "hnsw" or "exact"."""
    if method == "hnsw":
        index, score = hnsw_neighbours(vectors, k)
    elif method == "exact":
        index, score = exact_neighbours(vectors, k)
    else:
        raise ValueError(f"unknown neighbour search {method!r}; expected 'hnsw' or 'exact'")
    return UserGraph(users, index, score)
