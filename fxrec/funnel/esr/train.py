"""Training the early-stage ranker on the days before t, optionally distilled from the final stage.

`train_esr(log, before=t, ...)` reads only what a system could have at 00:00 UTC of day t:

- the impression log of the days before t (`fxrec.data.reader.iter_tables` stops at the last of them),
  with labels as observed at t: a conversion counts only once it has happened (`ts + delay < t`);
- with a `teacher` ({day: the final stage's scores of that day's candidates}, `FinalStage.score_log`),
  the final stage's probabilities on the candidate rows of the days before t (each scored by the VM
  that served its day), at most `distill_rows_per_day` of them per day, sampled by request; or, with
  `distill_on: impressions` (or `both`), the final stage's progressive predictions on the impressions
  of those days (`predictions_teacher`: day d's made by the VM trained through d-1).

Days are trained in time order (each day's rows shuffled), `passes` times over. Losses, per head:

- click: BCE on the click label;
- conversion: with a click head, ESMM-style BCE of pCTR x pCVR on the conversion label of every
  impression (pCVR is post-click); alone (the single-task baseline), BCE of pCVR on clicked impressions;
- hide: BCE on the hide label;
- distillation: `distill_weight` x the squared error of each head's logit to the logit of the final
  stage's same probability (p_click, the post-click p_conversion, p_hide) over the distilled rows
  (`distill_loss: logit_mse`, the default; `bce`: soft BCE on the probability). The value formula
  multiplies heads, so a head's relative error matters, which log-odds weigh evenly; on the quick
  bench logit_mse kept 94.5% of the final stage's value at K=50 where soft BCE kept 89.7%.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from fxrec.data.candidates import CandidateLog
from fxrec.data.eventlog import EventLog, day_start_ts
from fxrec.data.labels import delay_column
from fxrec.data.reader import iter_tables
from fxrec.funnel.candidate_rows import AD_COLUMNS, join_candidates
from fxrec.funnel.esr.features import EsrFeatures
from fxrec.funnel.esr.model import TASKS, EarlyStageRanker, TowerInputs
from fxrec.funnel.value import HIDE_PENALTY, post_click_conversion
from fxrec.run import ModelDir

# The final stage's probability each head distils from.
TEACHER_COLUMNS = {"click": "p_click", "conversion": "p_conversion", "hide": "p_hide"}


class EsrTrainConfig(BaseModel):
    """How an ESR trains (model widths included)."""

    model_config = ConfigDict(extra="forbid")

    dim: int = 16
    hidden: list[int] = [128]
    out: int = 64
    head_dim: int = 32
    batch_size: int = Field(default=256, ge=1)
    lr: float = 0.003
    passes: int = Field(default=1, ge=1)
    distill_weight: float = 1.0
    # bce: soft BCE on the teacher's probability; logit_mse: squared error of the logits (log-odds), which
    # weighs a rare event's relative error as much as a common one's, as a product of heads does
    distill_loss: Literal["bce", "logit_mse"] = "logit_mse"
    distill_rows_per_day: int | None = 60_000  # candidate rows distilled per day (None: all)
    # the rows the teacher's scores apply to: the candidate log's (FinalStage.score_log), the impressions'
    # (predictions_teacher: the final stage's progressive predictions), or both
    distill_on: Literal["candidates", "impressions", "both"] = "candidates"
    seed: int = 0
    hide_penalty: float = HIDE_PENALTY


@dataclass
class Examples:
    """Training rows: both towers' inputs, labels and teacher probabilities (NaN: none for that row)."""

    user: TowerInputs
    ad: TowerInputs
    labels: dict[str, torch.Tensor]  # click, conversion, hide (observed at the cutoff)
    teacher: dict[str, torch.Tensor]  # p_click, p_conversion, p_hide of the final stage

    @property
    def size(self) -> int:
        return self.user.size

    def take(self, rows: torch.Tensor) -> Examples:
        pick = lambda d: {k: v.index_select(0, rows) for k, v in d.items()}  # noqa: E731
        return Examples(self.user.take(rows), self.ad.take(rows), pick(self.labels), pick(self.teacher))

    @staticmethod
    def cat(parts: list[Examples]) -> Examples:
        return Examples(
            TowerInputs.cat([p.user for p in parts]),
            TowerInputs.cat([p.ad for p in parts]),
            {k: torch.cat([p.labels[k] for p in parts]) for k in parts[0].labels},
            {k: torch.cat([p.teacher[k] for p in parts]) for k in parts[0].teacher},
        )


def _nan(n: int) -> torch.Tensor:
    return torch.full((n,), float("nan"))


def impression_examples(
    features: EsrFeatures, table: pa.Table, history, cutoff_ts: int, scores: pa.Table | None = None
) -> Examples:
    """Impression rows with their labels as observed at `cutoff_ts`, and the teacher's probabilities
    where `scores` has the impression's (event_id, item_id)."""
    n, labels = table.num_rows, {}
    ts = table.column("ts").to_numpy().astype(np.float64)
    for task in TASKS:
        if task not in table.column_names:
            labels[task] = _nan(n)
            continue
        label = table.column(task).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32)
        if delay_column(task) in table.column_names:
            delay = table.column(delay_column(task)).fill_null(0.0).to_numpy(zero_copy_only=False)
            label = np.where(ts + delay < cutoff_ts, label, 0.0).astype(np.float32)
        labels[task] = torch.from_numpy(label)
    teacher = _teacher_targets(table, scores)
    return Examples(features.user_inputs(table, history), features.ad_inputs(table), labels, teacher)


def candidate_examples(features: EsrFeatures, rows: pa.Table, history, scores: pa.Table) -> Examples:
    """Candidate rows with the final stage's probabilities as targets (no labels); `scores` holds
    event_id, item_id and TEACHER_COLUMNS for (some of) the rows."""
    labels = {t: _nan(rows.num_rows) for t in TASKS}
    teacher = _teacher_targets(rows, scores)
    return Examples(features.user_inputs(rows, history), features.ad_inputs(rows), labels, teacher)


def _teacher_targets(rows: pa.Table, scores: pa.Table | None) -> dict[str, torch.Tensor]:
    """{TEACHER_COLUMNS: (N,)} the teacher's probability of each row's (event_id, item_id); NaN: none."""
    n = rows.num_rows
    targets = {column: np.full(n, np.nan, dtype=np.float32) for column in TEACHER_COLUMNS.values()}
    if scores is not None and n:
        keys = pa.table(
            {"event_id": rows.column("event_id"), "item_id": rows.column("item_id"), "_row": np.arange(n)}
        )
        wanted = ["event_id", "item_id", *[c for c in targets if c in scores.column_names]]
        joined = keys.join(scores.select(wanted), ["event_id", "item_id"], join_type="inner")
        index = joined.column("_row").to_numpy()
        for column, target in targets.items():
            if column in joined.column_names:
                target[index] = joined.column(column).to_numpy(zero_copy_only=False)
    return {column: torch.from_numpy(target) for column, target in targets.items()}


def predictions_teacher(model_dir: ModelDir, log: EventLog, days: list[str]) -> dict[str, pa.Table]:
    """A teacher from a trained model's progressive predictions on impressions ({day: event_id, item_id,
    p_click, p_conversion (post-click), p_hide}); day d's come from the model trained through d-1.
    Train with `distill_on: impressions` (or `both`) to use it."""
    out = {}
    for day in days:
        path = model_dir.prediction(day)
        if not path.exists():
            continue
        predictions = pq.read_table(path)
        items = log.read_day(day, ["event_id", "item_id"])
        predictions = predictions.join(items, "event_id", join_type="inner")
        p_click = predictions.column("pred_click").to_numpy().astype(np.float64)
        columns = {"event_id": predictions.column("event_id"), "item_id": predictions.column("item_id")}
        columns["p_click"] = pa.array(p_click.astype(np.float32))
        if "pred_conversion" in predictions.column_names:
            pctcvr = predictions.column("pred_conversion").to_numpy().astype(np.float64)
            columns["p_conversion"] = pa.array(post_click_conversion(p_click, pctcvr).astype(np.float32))
        if "pred_hide" in predictions.column_names:
            columns["p_hide"] = predictions.column("pred_hide")
        out[day] = pa.table(columns)
    return out


def training_days(
    log: EventLog,
    features: EsrFeatures,
    before: str,
    teacher: dict[str, pa.Table] | None = None,
    distill_rows_per_day: int | None = None,
    seed: int = 0,
    after: str | None = None,
    distill_on: str = "candidates",
) -> Iterator[tuple[str, Examples]]:
    """(day, that day's examples) for the log's days in [after, before), in time order. Reads nothing of
    day `before` or later: the impression log stops at the day before, labels are those observed at
    00:00 UTC of `before`, the teacher's scores and the candidate log are read for earlier days only.
    `distill_on`: the rows the teacher's scores apply to (candidates, impressions or both)."""
    days = [d for d in log.days if d < before and (after is None or d >= after)]
    if not days:
        return
    cutoff = day_start_ts(before)
    tasks = [t for t in TASKS if t in log.spec.tasks]
    extra = tuple(dict.fromkeys([*AD_COLUMNS, *tasks, *(delay_column(t) for t in tasks)]))
    on_candidates = distill_on in ("candidates", "both")
    candidates = CandidateLog(log.path) if teacher and on_candidates else None
    for day, table, history in iter_tables(log, features.specs(), days=days, meta=extra):
        scores = teacher.get(day) if teacher else None
        on_impressions = scores if distill_on in ("impressions", "both") else None
        parts = [impression_examples(features, table, history, cutoff, on_impressions)]
        if candidates is not None and scores is not None and day in candidates.days:
            logged = candidates.read_day(day)
            logged = _sample_requests(logged, distill_rows_per_day, seed, day)
            if logged.num_rows:
                rows, histories = join_candidates(table, history, logged)
                parts.append(candidate_examples(features, rows, histories, scores))
        yield day, Examples.cat(parts) if len(parts) > 1 else parts[0]


def _sample_requests(candidates: pa.Table, rows: int | None, seed: int, day: str) -> pa.Table:
    """Whole requests, drawn at random until about `rows` candidate rows (None: all of them)."""
    if rows is None or candidates.num_rows <= rows:
        return candidates
    requests = pc.unique(candidates.column("event_id")).to_numpy()
    per_request = candidates.num_rows / max(len(requests), 1)
    keep = max(1, int(rows / per_request))
    rng = np.random.default_rng([seed, int(day.replace("-", ""))])
    chosen = rng.choice(requests, size=min(keep, len(requests)), replace=False)
    return candidates.filter(pc.is_in(candidates.column("event_id"), value_set=pa.array(chosen)))


def build_esr(
    features: EsrFeatures, tasks: list[str] | tuple[str, ...], config: EsrTrainConfig
) -> EarlyStageRanker:
    torch.manual_seed(config.seed)
    return EarlyStageRanker(
        **features.model_arguments(),
        tasks=list(tasks),
        dim=config.dim,
        hidden=config.hidden,
        out=config.out,
        head_dim=config.head_dim,
        hide_penalty=config.hide_penalty,
    )


def esr_loss(
    model: EarlyStageRanker, batch: Examples, distill_weight: float, distill_loss: str = "bce"
) -> torch.Tensor:
    """The labelled losses of the model's heads plus `distill_weight` x their distillation losses."""
    logits = model.logits(model.user_vectors(batch.user), model.ad_vectors(batch.ad))
    total = torch.zeros(())
    for task, logit in logits.items():
        label = batch.labels[task]
        if task == "conversion" and "click" in logits:  # ESMM: pCTR x pCVR on every impression
            known = ~torch.isnan(label)
            if known.any():
                p = (torch.sigmoid(logits["click"][known]) * torch.sigmoid(logit[known])).clamp(
                    1e-7, 1 - 1e-7
                )
                total = total + F.binary_cross_entropy(p, label[known])
        elif task == "conversion":  # alone: post-click, on clicked impressions
            known = ~torch.isnan(label) & (batch.labels["click"] > 0)
            if known.any():
                total = total + F.binary_cross_entropy_with_logits(logit[known], label[known])
        else:
            known = ~torch.isnan(label)
            if known.any():
                total = total + F.binary_cross_entropy_with_logits(logit[known], label[known])
        target = batch.teacher[TEACHER_COLUMNS[task]]
        distilled = ~torch.isnan(target)
        if distill_weight > 0 and distilled.any():
            if distill_loss == "logit_mse":
                goal = torch.logit(target[distilled].clamp(1e-6, 1 - 1e-6))
                total = total + distill_weight * F.mse_loss(logit[distilled], goal)
            else:
                total = total + distill_weight * F.binary_cross_entropy_with_logits(
                    logit[distilled], target[distilled]
                )
    return total


def train_esr(
    log: EventLog,
    before: str,
    tasks: list[str] | tuple[str, ...] = TASKS,
    teacher: dict[str, pa.Table] | None = None,
    config: EsrTrainConfig | None = None,
    features: EsrFeatures | None = None,
    model: EarlyStageRanker | None = None,
    after: str | None = None,
) -> EarlyStageRanker:
    """An ESR with heads `tasks` trained on the log's days before `before` (from `after` on, continuing
    `model` when given), distilled from `teacher` when given. Its `notes` record what it read."""
    config = config or EsrTrainConfig()
    features = features or EsrFeatures(log.spec)
    tasks = [t for t in tasks if t in log.spec.tasks]  # a log without hide events: no hide head
    model = model if model is not None else build_esr(features, tasks, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    started, rows, days_read = time.perf_counter(), 0, []
    model.train()
    for repeat in range(config.passes):
        for day, examples in training_days(
            log, features, before, teacher, config.distill_rows_per_day, config.seed, after, config.distill_on
        ):
            if repeat == 0:
                days_read.append(day)
            order = torch.randperm(examples.size, generator=generator)
            for start in range(0, examples.size, config.batch_size):
                batch = examples.take(order[start : start + config.batch_size])
                loss = esr_loss(model, batch, config.distill_weight if teacher else 0.0, config.distill_loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                rows += batch.size
    model.eval()
    model.notes.update(
        trained_before=before,
        days=days_read,
        distilled=bool(teacher),
        rows=rows,
        seconds=round(time.perf_counter() - started, 2),
        config=config.model_dump(),
    )
    return model
