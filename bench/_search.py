"""One hyperparameter search for every model in bench/quality_peers.py: the space, the trials, the pick.

The space is a grid of optimiser settings every library exposes the same way: one Adam learning
rate for all parameters, the batch size, and an L2 penalty on the embedding rows (Adam's coupled
weight decay on the embedding tables only: fxrec's `embedding_weight_decay` with Adam embeddings,
and the same Adam parameter group on DeepCTR-Torch's and FuxiCTR's tables). A search of n trials
is the first n grid points of one seeded permutation, so every model gets the same n settings in the
same order, and a longer search extends a shorter one. The pick is the trial with the highest
validation AUC (the earlier trial on a tie); test metrics never enter.

Example::

    trials = sample_trials(8)  # the same 8 Trials for every model
    best = select_trial({0: 0.71, 1: 0.73, 2: 0.73})  # 1
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

# The grid, declared once for every model, fxrec and peer alike.
SEARCH_SPACE: dict[str, tuple[float, ...]] = {
    "lr": (3e-4, 1e-3, 3e-3),
    "batch_size": (1024, 4096),
    "embedding_l2": (0.0, 1e-5, 1e-4, 1e-3),
}
SEARCH_SEED = 0


@dataclass(frozen=True)
class Trial:
    """One point of SEARCH_SPACE: Adam lr on every parameter, batch size, L2 on embedding rows."""

    lr: float
    batch_size: int
    embedding_l2: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def grid() -> list[Trial]:
    """Every point of SEARCH_SPACE, in a fixed order."""
    names = list(SEARCH_SPACE)
    return [
        Trial(**dict(zip(names, values, strict=True)))  # type: ignore[arg-type]
        for values in itertools.product(*SEARCH_SPACE.values())
    ]


def sample_trials(n: int, seed: int = SEARCH_SEED) -> list[Trial]:
    """The first n points of the grid in one seeded order (n <= grid size): a prefix for any n."""
    points = grid()
    if not 1 <= n <= len(points):
        raise ValueError(f"trials must be between 1 and {len(points)} (the grid's size), got {n}")
    order = np.random.default_rng(seed).permutation(len(points))
    return [points[i] for i in order[:n]]


def select_trial(valid_auc: dict[int, float]) -> int:
    """The trial index with the highest validation AUC; the lower index wins a tie."""
    if not valid_auc:
        raise ValueError("no trials to select from")
    return min(valid_auc, key=lambda k: (-valid_auc[k], k))
