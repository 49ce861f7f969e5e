"""Resumable parts for bench/quality_peers.py: a per-run result cache and a plan that splits the work.

Every training run (one search trial, or one final seed of the selected setting) is one small JSON
file, plus its test predictions for final runs, under `bench/parts/quality_peers/<protocol>/`, where
<protocol> is a digest of everything that makes runs comparable (search space, epochs, patience,
shared architecture, datasets' configs). Parts run as separate processes, in any order, even side by
side: each writes only its own files, atomically, and a part finds what earlier parts finished. A
changed protocol is a new folder, so stale runs are never mixed in.

Example::

    cache = RunCache(ROOT / "bench" / "parts" / "quality_peers", {"max_epochs": 6, ...})
    cache.save(cache.trial_path("movielens", "fxrec_dcnv2", 0), {"valid_auc": 0.71})
    parts = plan_parts({("movielens", "fxrec_dcnv2"): 60.0}, trials=8, seeds=3, budget_s=2700)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class RunCache:
    """Per-(dataset, model, run) records for one protocol."""

    def __init__(self, root: Path, protocol: dict[str, Any]):
        text = json.dumps(protocol, sort_keys=True, default=str)
        self.dir = root / hashlib.sha1(text.encode()).hexdigest()[:10]
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "protocol.json").write_text(text)

    def trial_path(self, dataset: str, model: str, trial: int) -> Path:
        return self.dir / dataset / model / f"trial-{trial}.json"

    def final_path(self, dataset: str, model: str, trials: int, seed: int) -> Path:
        """A final run depends on the search it was selected by: its size is in the name."""
        return self.dir / dataset / model / f"final-of-{trials}-seed-{seed}.json"

    def test_rows_path(self, dataset: str) -> Path:
        return self.dir / dataset / "test_rows.npz"

    @staticmethod
    def load(path: Path) -> dict[str, Any] | None:
        return json.loads(path.read_text()) if path.exists() else None

    @staticmethod
    def save(path: Path, record: dict[str, Any], probs: np.ndarray | None = None) -> None:
        """Write `record` (and `probs` beside it, as .npy) atomically: a killed part leaves no half file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if probs is not None:
            _atomic(path.with_suffix(".npy"), lambda f: np.save(f, np.asarray(probs, dtype=np.float32)))
        _atomic(path, lambda f: f.write(json.dumps(record, indent=1).encode()))

    def save_test_rows(self, dataset: str, **arrays: Any) -> None:
        """The test split's labels and users (for the report's bootstrap) and its sizes; atomically,
        since parts of one dataset running side by side each write the same file."""
        path = self.test_rows_path(dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic(path, lambda f: np.savez(f, **arrays))

    @staticmethod
    def load_probs(path: Path) -> np.ndarray:
        return np.load(path.with_suffix(".npy"))


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


@dataclass
class Part:
    """One process's share: some models of one dataset, their search trials in `trial_range`, and,
    where `finals`, the final seeds (a run without --trial-range: it does the trials still missing)."""

    dataset: str
    models: list[str]
    seconds: float
    trial_range: tuple[int, int]
    finals: bool = True

    def command(self, trials: int, seeds: int) -> str:
        extra = "" if self.finals else f" --trial-range {self.trial_range[0]}:{self.trial_range[1]}"
        return (
            f"python bench/quality_peers.py --datasets {self.dataset} --models {','.join(self.models)} "
            f"--trials {trials} --seeds {seeds}{extra} --resume"
        )


def plan_parts(
    run_seconds: dict[tuple[str, str], float], trials: int, seeds: int, budget_s: float
) -> list[Part]:
    """Parts of at most `budget_s` each (by the estimates): a model's whole search and final seeds
    together where they fit, packed first-fit by decreasing size with other models of its dataset;
    a model that does not fit alone is split into search-only trial ranges and a last part with the
    final seeds and the trials that fit beside them, to run after the model's other parts."""
    parts: list[Part] = []
    datasets = list(dict.fromkeys(d for d, _ in run_seconds))
    for dataset in datasets:
        costs = {m: s * (trials + seeds) for (d, m), s in run_seconds.items() if d == dataset}
        packed: list[Part] = []
        for model in sorted(costs, key=lambda m: -costs[m]):
            run = run_seconds[(dataset, model)]
            if costs[model] > budget_s:
                parts.extend(_split_model(dataset, model, run, trials, seeds, budget_s))
                continue
            home = next((p for p in packed if p.seconds + costs[model] <= budget_s), None)
            if home is None:
                packed.append(Part(dataset, [model], costs[model], (0, trials)))
            else:
                home.models.append(model)
                home.seconds += costs[model]
        parts.extend(packed)
    return parts


def _split_model(
    dataset: str, model: str, run: float, trials: int, seeds: int, budget_s: float
) -> list[Part]:
    per_part = max(1, math.floor(budget_s / run))
    beside_finals = max(0, min(trials, per_part - seeds))  # trials that fit in the last part
    head = trials - beside_finals
    parts = [
        Part(
            dataset, [model], (min(a + per_part, head) - a) * run, (a, min(a + per_part, head)), finals=False
        )
        for a in range(0, head, per_part)
    ]
    parts.append(Part(dataset, [model], (beside_finals + seeds) * run, (head, trials)))
    return parts
