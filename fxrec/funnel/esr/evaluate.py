"""Early-stage rankers over later days, side by side: soft recall@K and per-task NE / AUC.

For each evaluation day (every ranker trained on days before the first of them, or before each, as
the caller chose):

- soft recall@K (`fxrec.funnel.soft_recall`) of each ranker's score against the final stage's value
  over the day's logged candidates, pooled over the days' requests;
- per task, NE and AUC of each ranker on the day's impressions against the matured labels: click
  P(click), conversion P(click and conversion) = pCTR x pCVR, hide P(hide).

Reference rows: `final_stage_vs_oracle` (the final stage's own value against the simulator's oracle
value, where the log has oracle columns: how much of the attainable value the final stage itself
keeps), `bid` (ranking by bid alone) and `random`; `prediction_metrics` gives the final stage's own
NE / AUC from its progressive predictions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from fxrec.data.eventlog import EventLog
from fxrec.data.reader import iter_tables
from fxrec.funnel.candidate_rows import iter_candidate_rows
from fxrec.funnel.esr.features import EsrFeatures
from fxrec.funnel.esr.model import EarlyStageRanker, SeparateRankers
from fxrec.funnel.esr.rank import esr_scores, impression_probabilities
from fxrec.funnel.soft_recall import soft_recall_at_k
from fxrec.funnel.value import HIDE_PENALTY, value
from fxrec.metrics.ranking import auc, ne
from fxrec.run import ModelDir

KS = (10, 50)


@dataclass
class EsrResult:
    days: list[str]
    ks: tuple[int, ...]
    soft_recall: dict[str, dict[int, float]] = field(default_factory=dict)
    tasks: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # name -> task -> {ne, auc}
    seconds: dict[str, float] = field(default_factory=dict)  # scoring time per ranker
    requests: int = 0
    candidates_per_request: float = 0.0

    def as_dict(self) -> dict:
        return {
            "days": self.days,
            "ks": list(self.ks),
            "soft_recall": {n: {str(k): v for k, v in r.items()} for n, r in self.soft_recall.items()},
            "tasks": self.tasks,
            "seconds": self.seconds,
            "requests": self.requests,
            "candidates_per_request": self.candidates_per_request,
        }


def evaluate_rankers(
    log: EventLog,
    rankers: dict[str, EarlyStageRanker | SeparateRankers],
    final_scores: dict[str, pa.Table],
    days: list[str],
    ks: tuple[int, ...] = KS,
    features: EsrFeatures | None = None,
    hide_penalty: float = HIDE_PENALTY,
    seed: int = 0,
) -> EsrResult:
    """Every ranker over `days`; `final_scores` {day: FinalStage.score_day's table}, in the candidate
    log's row order (as `FinalStage.score_log` yields it)."""
    features = features or EsrFeatures(log.spec)
    result = EsrResult(list(days), tuple(ks))
    rng = np.random.default_rng(seed)
    pooled: dict[str, list[np.ndarray]] = {}
    values, groups = [], []
    seconds = dict.fromkeys(rankers, 0.0)
    oracle: list[np.ndarray] = []
    for day, rows, history in iter_candidate_rows(log, features.specs(), days):
        final = final_scores[day]
        same = np.array_equal(final.column("event_id").to_numpy(), rows.column("event_id").to_numpy()) and (
            np.array_equal(final.column("item_id").to_numpy(), rows.column("item_id").to_numpy())
        )
        if not same:
            raise ValueError(f"final_scores[{day!r}] is not in the candidate log's row order")
        values.append(final.column("value").to_numpy().astype(np.float64))
        groups.append(rows.column("event_id").to_numpy())
        for name, ranker in rankers.items():
            started = time.perf_counter()
            pooled.setdefault(name, []).append(esr_scores(ranker, features, rows, history)["score"])
            seconds[name] += time.perf_counter() - started
        pooled.setdefault("bid", []).append(rows.column("bid").to_numpy().astype(np.float64))
        pooled.setdefault("random", []).append(rng.random(rows.num_rows))
        truth = _oracle_value(log, day, hide_penalty)
        if truth is not None:
            oracle.append(truth)
    if not values:
        raise ValueError(f"no logged candidates on the evaluation days {days}")
    value_all, group_all = np.concatenate(values), np.concatenate(groups)
    for name, parts in pooled.items():
        scores = np.concatenate(parts)
        result.soft_recall[name] = {k: soft_recall_at_k(scores, value_all, group_all, k) for k in ks}
    if len(oracle) == len(values):  # how much of the true value the final stage itself keeps
        truth = np.concatenate(oracle)
        result.soft_recall["final_stage_vs_oracle"] = {
            k: soft_recall_at_k(value_all, truth, group_all, k) for k in ks
        }
    result.requests = len(np.unique(group_all))
    result.candidates_per_request = len(group_all) / max(result.requests, 1)
    result.seconds = {k: round(v, 2) for k, v in seconds.items()}
    result.tasks = impression_metrics(log, rankers, days, features)
    return result


def prediction_metrics(model_dir: ModelDir, days: list[str]) -> dict[str, dict[str, float]]:
    """{task: {ne, auc}} of a trained model's progressive predictions on the impressions of `days` (each
    day predicted by the model trained through the day before): the final stage's row of the table."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(model_dir.prediction(d)) for d in days if model_dir.prediction(d).exists()]
    if not tables:
        return {}
    table = pa.concat_tables(tables)
    out = {}
    for task in ("click", "conversion", "hide"):
        if f"pred_{task}" in table.column_names:
            y, p = table.column(f"label_{task}").to_numpy(), table.column(f"pred_{task}").to_numpy()
            out[task] = {"ne": round(float(ne(y, p)), 4), "auc": round(float(auc(y, p)), 4)}
    return out


def _oracle_value(log: EventLog, day: str, hide_penalty: float) -> np.ndarray | None:
    from fxrec.data.candidates import CandidateLog

    candidates = CandidateLog(log.path)
    needed = ["oracle_p_click", "oracle_p_conversion", "oracle_p_hide"]
    if not set(needed) <= set(candidates.spec.oracle):
        return None
    table = candidates.read_day(day, ["bid", *needed])
    p_click = table.column("oracle_p_click").to_numpy().astype(np.float64)
    # the oracle's hide is P(hide | no click); the formula's is per impression
    p_hide = (1 - p_click) * table.column("oracle_p_hide").to_numpy()
    bid = table.column("bid").to_numpy().astype(np.float64)
    return value(
        bid, p_click, table.column("oracle_p_conversion").to_numpy().astype(np.float64), p_hide, hide_penalty
    )


def impression_metrics(
    log: EventLog,
    rankers: dict[str, EarlyStageRanker | SeparateRankers],
    days: list[str],
    features: EsrFeatures,
) -> dict[str, dict[str, dict[str, float]]]:
    """{ranker: {task: {ne, auc}}} on the impressions of `days` (matured labels)."""
    probs: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in rankers}
    labels: dict[str, list[np.ndarray]] = {}
    tasks = [t for t in ("click", "conversion", "hide") if t in log.spec.tasks]
    for _, table, history in iter_tables(log, features.specs(), days=days, meta=("bid",)):
        for task in tasks:
            labels.setdefault(task, []).append(table.column(task).to_numpy(zero_copy_only=False))
        for name, ranker in rankers.items():
            for task, p in impression_probabilities(esr_scores(ranker, features, table, history)).items():
                probs[name].setdefault(task, []).append(p)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, by_task in probs.items():
        out[name] = {}
        for task, parts in by_task.items():
            y, p = np.concatenate(labels[task]), np.concatenate(parts)
            out[name][task] = {"ne": round(float(ne(y, p)), 4), "auc": round(float(auc(y, p)), 4)}
    return out
