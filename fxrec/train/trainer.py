"""The streaming trainer: progressive evaluation over a time-ordered log.

For each day t in order: first predict day t with the model trained through day t-1 (those
predictions are the evaluation: the model never saw these events), then train one pass over day t.
The last day is only evaluated. Training at the end of day t sees day t's labels as observed then
(`fxrec.data.labels.observed_labels`: a conversion that happens after midnight is a negative);
evaluation scores the matured labels. Delayed feedback and fixed-window conversion heads
(`TrainConfig.delayed_feedback`, a model config's `windows:`; fxrec.objectives) change what each day
trains: older days' events whose labels have matured or whose windows have closed, per-task loss
weights, an elapsed-time likelihood (`fxrec.objectives.schedule`); without them a day is one pass over
its own events. Predictions go to `<model_dir>/predictions/day=<t>.parquet`
(`fxrec.data.compact_parquet`); metrics are computed from them afterwards, so any two models can be
compared on the same events.

Embeddings are updated by the fused row-wise AdaGrad inside TorchRec's fused embedding bags, or by
Adam on plain tables (`TrainConfig.embedding_optimizer`); dense parameters by Adam. A checkpoint every
`checkpoint_every` steps holds everything needed to resume mid-day and reach the same result as an
uninterrupted run; resuming never reads a daily snapshot (`TrainConfig.snapshots`), which only
`fxrec publish` does.

Low-precision dispatch (fxrec.lowp.dispatch, the model config's `dispatch:` block, handed in as a
`Dispatch`): a format plan is applied before the first step; `auto` hooks a `Probe` on the model's
Linears for the first day this fit trains, then applies `plan_from_probe` of it before the next day's
predictions, for the rest of training (the probe goes to `ModelDir.dispatch_probe_json`). The plan in
force is part of the checkpoint, so a resumed run keeps it, and the one training ends with goes into the
model card (`fxrec.factory.save_dispatch_plan`), which `load_model` applies.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
import torchrec.optim as trec_optim
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fxrec.config import TrainConfig
from fxrec.data.batches import Batch, EventFrame
from fxrec.data.compact_parquet import write_compact
from fxrec.data.eventlog import EventLog
from fxrec.data.labels import training_cutoff
from fxrec.data.reader import iter_frames
from fxrec.errors import TrainingInterrupted
from fxrec.factory import save_dispatch_plan
from fxrec.lowp.dispatch import Dispatch, apply_plan, current_plan, dispatchable
from fxrec.lowp.probe import Probe
from fxrec.lowp.pruning import Pruner
from fxrec.models.checkpoint import load, model_state, save_atomic
from fxrec.models.output import ModelOutput
from fxrec.models.ranking import RankingModel
from fxrec.objectives.c2al import CohortAuxiliary
from fxrec.objectives.feedback import DelayedFeedback, label_loss
from fxrec.objectives.schedule import LabelSchedule, TrainingUnit
from fxrec.objectives.window_rates import fit_window_rates
from fxrec.objectives.windows import ConversionWindows
from fxrec.run import ModelDir
from fxrec.transfer.published import PublishedFM


@dataclass
class RunningNE:
    """Running NE of one task over the examples trained so far (for the progress bar)."""

    task: str  # the model's first task
    loss_sum: float = 0.0
    label_sum: float = 0.0
    count: int = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += float(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
        self.label_sum += float(labels.sum())
        self.count += int(labels.numel())

    @property
    def value(self) -> float:
        if self.count == 0:
            return float("nan")
        p = min(max(self.label_sum / self.count, 1e-7), 1 - 1e-7)
        return (self.loss_sum / self.count) / -(p * np.log(p) + (1 - p) * np.log(1 - p))


class LabelTally:
    """Events, and per task the examples trained (by loss weight) and their positives, so far."""

    def __init__(self, tasks: list[str]):
        self.events = 0
        self.positives = dict.fromkeys(tasks, 0.0)
        self.counts = dict.fromkeys(tasks, 0.0)

    def add(self, frame: EventFrame, rows: torch.Tensor | None = None) -> LabelTally:
        size = frame.num_rows if rows is None else len(rows)
        self.events += size
        for task in self.positives:
            labels, weights = frame.labels[task], frame.label_weights.get(task)
            if rows is not None:
                labels = labels[rows]
                weights = weights[rows] if weights is not None else None
            if weights is None:
                self.positives[task] += float(labels.sum())
                self.counts[task] += size
            else:
                self.positives[task] += float((labels * weights).sum())
                self.counts[task] += float(weights.sum())
        return self

    def add_units(self, units: list[TrainingUnit]) -> LabelTally:
        for unit in units:
            self.add(unit.frame, unit.rows)
        return self


class Trainer:
    """Trains one RankingModel progressively over an event log and writes its predictions."""

    def __init__(
        self,
        model: RankingModel,
        config: TrainConfig,
        model_dir: ModelDir | Path,
        progress: bool = True,
        published: PublishedFM | None = None,
        dispatch: Dispatch | None = None,
    ):
        if len(model.channels) and published is None:
            names = [c.name for c in model.channels]
            raise ValueError(f"model {ModelDir(model_dir).name!r} uses transfer channels {names}: it needs the FM's published outputs")
        self.model = model
        self.published = published
        self.config = config
        self.model_dir = ModelDir(model_dir)
        self.progress = progress
        # C2AL's auxiliary heads weigh λ (their block's) unless task_weights names them
        self.c2al = CohortAuxiliary.of(model)
        auxiliary = self.c2al.tasks if self.c2al is not None else {}
        self.task_weights = {t: config.task_weights.get(t, auxiliary.get(t, 1.0)) for t in model.tasks}
        # what predictions hold: every task but C2AL's (never served, never evaluated)
        self.predicted_tasks = [t for t in model.tasks if t not in auxiliary]
        self.running_ne = RunningNE(model.tasks[0])  # the progress bar's NE follows the model's first task
        fused = model.fused_optimizer()
        if fused is not None and config.embedding_optimizer != "rowwise_adagrad":
            raise ValueError(
                f"embedding_optimizer {config.embedding_optimizer!r} needs unfused tables: build the model with "
                f"build_model(..., embedding_optimizer={config.embedding_optimizer!r})"
            )
        embedding_params = [] if fused is not None else list(model.sparse_arch.parameters())
        # Embedding rows have their own optimizer; so do channel parts with their own update rule.
        separate = {id(p) for p in model.sparse_arch.parameters()}
        separate |= {id(p) for channel in model.channels for p in channel.own_parameters()}
        dense_params = [p for p in model.parameters() if id(p) not in separate]
        # fused: one kernel for the whole update (~5x faster than the per-tensor loop on CPU); it
        # differs from the loop only in float rounding (~1e-8) and is deterministic, so resume is exact.
        self.dense_optimizer = torch.optim.Adam(
            dense_params, lr=config.dense_lr, weight_decay=config.weight_decay, fused=True
        )
        self.embedding_optimizer = fused or self._unfused_embedding_optimizer(embedding_params, config)
        self.step = 0
        self.trained_through: str | None = None  # the last day this model has finished training on
        self.dispatch = dispatch or Dispatch()
        self.planned = False  # whether the dispatch plan is in force (auto: once the probe chose it)
        self.pruner = Pruner.of(model)  # a model config's `prune:` block; None without one
        # fxrec.objectives: delayed feedback (TrainConfig) and window heads (the model config's `windows:`)
        self.feedback = DelayedFeedback(**config.delayed_feedback.kwargs())
        self.windows = ConversionWindows.of(model)

    @staticmethod
    def _unfused_embedding_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
        # Without the fused TBE (jagged sequences on CPU, or Adam), the rows get a plain optimizer.
        if config.embedding_optimizer == "adam":
            # Dense Adam over whole tables, as FuxiCTR and DeepCTR train theirs: rows absent from a
            # batch still move with their momentum, and weight decay pulls every row (L2 regulariser).
            # Fused, as the dense part: one kernel over every table instead of a per-tensor loop.
            return torch.optim.Adam(
                params, lr=config.embedding_lr, weight_decay=config.embedding_weight_decay, fused=True
            )
        return trec_optim.RowWiseAdagrad(params, lr=config.embedding_lr)

    # -- one step ---------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        output = self.forward(batch)
        total: torch.Tensor | None = None
        for task, weight in self.task_weights.items():
            task_loss = label_loss(  # plain BCE unless an objective set weights or observation shares
                output.logits[task], batch.labels[task], batch.label_weights.get(task), batch.label_observed.get(task)
            )
            task_loss = task_loss if weight == 1.0 else weight * task_loss  # x * 1.0 == x: skip the op
            total = task_loss if total is None else total + task_loss
        for channel in self.model.channels:
            extra = channel.loss(output, batch)
            if extra is not None:
                total = extra if total is None else total + extra
        return (total if total is not None else torch.zeros(())), output.logits

    def forward(self, batch: Batch) -> ModelOutput:
        """The training forward (a sharded trainer runs it through its DistributedModelParallel)."""
        return self.model(batch)

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.model.train()
        for channel in self.model.channels:
            channel.before_step(batch)  # ExFM's student adapter learns from the fresh labels first
        self.dense_optimizer.zero_grad(set_to_none=True)
        self.embedding_optimizer.zero_grad(set_to_none=True)  # a no-op for the fused optimizer
        loss, logits = self.loss(batch)
        loss.backward()  # the fused embedding bags update their rows here
        for group in self.dense_optimizer.param_groups:  # from self.step, so a resumed run continues it
            group["lr"] = self.dense_lr(self.step)
        self.dense_optimizer.step()
        if self.pruner is not None:
            self.pruner.after_step()  # one-shot pruned weights stay zero
        self.embedding_optimizer.step()  # a no-op for the fused optimizer: backward already applied it
        self.step += 1
        return logits

    def dense_lr(self, step: int) -> float:
        """The dense parameters' learning rate at optimizer step `step` (0-based; TrainConfig's schedule)."""
        config = self.config
        warmup = min(1.0, (step + 1) / config.dense_lr_warmup_steps) if config.dense_lr_warmup_steps else 1.0
        decay = config.dense_lr_decay ** (max(0, step - config.dense_lr_warmup_steps) / config.dense_lr_decay_steps)
        return config.dense_lr * warmup * decay

    @torch.no_grad()
    def predict(self, frame: EventFrame) -> dict[str, np.ndarray]:
        self.model.eval()
        tasks = self.predicted_tasks
        chunks: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
        for batch in frame.batches(max(self.config.batch_size, 4096)):
            logits = self.model(batch).logits
            for task in tasks:
                chunks[task].append(torch.sigmoid(logits[task]).numpy())
        return {t: np.concatenate(v) for t, v in chunks.items()}

    # -- checkpoints ------------------------------------------------------------------------
    def _progress(self, day: str, batches_done: int, day_finished: bool) -> dict:
        """Where training stands, as every checkpoint records it (one process's or a sharded run's)."""
        return {
            "dense_optimizer": self.dense_optimizer.state_dict(),
            "day": day,
            "batches_done": batches_done,
            "day_finished": day_finished,
            "step": self.step,
            "trained_through": self.trained_through or "",
            "rng": torch.get_rng_state(),
        }

    def _resume_progress(self, state: dict) -> tuple[str, int, bool]:
        """Back to where `_progress` recorded: (day, batches done, whether the day was finished)."""
        self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        self.step = int(state["step"])
        self.trained_through = state["trained_through"] or None
        torch.set_rng_state(state["rng"])
        return state["day"], int(state["batches_done"]), bool(state["day_finished"])

    def _checkpoint(self, day: str, batches_done: int, day_finished: bool) -> None:
        save_atomic(
            {
                "model": model_state(self.model),
                "embedding_optimizer": self.embedding_optimizer.state_dict(),
                **self._progress(day, batches_done, day_finished),
                "channel_optimizers": [c.optimizer_state() for c in self.model.channels],
                **({"dispatch_plan": current_plan(self.model)} if self.planned else {}),
            },
            self.model_dir.checkpoint,
        )

    def _restore(self) -> tuple[str, int, bool] | None:
        path = self.model_dir.checkpoint
        if not path.exists():
            return None
        state = load(path)
        self.model.load_state_dict(state["model"])
        self.embedding_optimizer.load_state_dict(state["embedding_optimizer"])
        for channel, optimizer_state in zip(self.model.channels, state.get("channel_optimizers", []), strict=False):
            channel.load_optimizer_state(optimizer_state)
        if "dispatch_plan" in state:  # the plan the interrupted run had chosen (auto) or applied
            apply_plan(self.model, state["dispatch_plan"], self.dispatch.backward)
            self.planned = True
        return self._resume_progress(state)

    # -- low-precision dispatch --------------------------------------------------------------
    @property
    def dispatch_plan(self) -> dict[str, str] | None:
        """The plan in force ({Linear path: format}, the model card's `dispatch_plan`); None without one."""
        return current_plan(self.model) if self.planned else None

    def _start_dispatch(self) -> None:
        """A format plan from the first step (a resumed run has its checkpoint's already)."""
        if self.planned or not self.dispatch.active or self.dispatch.auto:
            return
        apply_plan(self.model, self.dispatch.initial_plan(self.model), self.dispatch.backward)
        self.planned = True

    def _day_probe(self) -> Probe | None:
        """`auto` before its plan: a Probe on the Linears a plan can name, for this training day."""
        if not self.dispatch.auto or self.planned:
            return None
        names = set(dispatchable(self.model))
        return Probe(self.model, include=lambda name, _: name in names).attach()

    def _plan_from(self, probe: Probe, day: str) -> str:
        """Choose and apply `auto`'s plan from the day's probe; returns a line saying what it chose."""
        probe.detach()
        report = probe.report(samples=min(self.config.batch_size, 4096))
        self.model_dir.root.mkdir(parents=True, exist_ok=True)
        self.model_dir.dispatch_probe_json.write_text(json.dumps({"day": day, **report.to_dict()}, indent=2))
        plan = self.dispatch.choose(report)
        apply_plan(self.model, plan, self.dispatch.backward)
        self.planned = True
        low = Counter(f for f in plan.values() if f != "fp32")
        chosen = ", ".join(f"{f} {n}" for f, n in low.most_common()) or "none"
        return (
            f"{self.model_dir.name}: dispatch plan from the probe of day {day}: "
            f"{sum(low.values())} of {len(plan)} Linears in low precision ({chosen})"
        )

    # -- the progressive loop ---------------------------------------------------------------
    def fit(self, log: EventLog, surfaces: list[str] | None = None) -> Path:
        """Progressive train/evaluate over the whole log; resumes from a checkpoint if there is one."""
        torch.set_num_threads(self.config.threads)
        torch.manual_seed(self.config.seed)
        features = [log.spec.feature(n) for n in self.model.features]
        resume = self._restore()
        self._start_dispatch()
        predictions_dir = self.model_dir.predictions
        predictions_dir.mkdir(parents=True, exist_ok=True)
        running = self.running_ne = RunningNE(self.model.tasks[0])  # this fit's examples
        started, examples = time.perf_counter(), 0
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8} ex/s  NE {task.fields[ne]}"),
            TimeElapsedColumn(),
            disable=not self.progress,
        ) as bar:
            task = bar.add_task(self.model_dir.name, total=len(log.days), rate="-", ne="-")
            seen = LabelTally(self.model.tasks)  # labels trained on so far (for the starting bias)
            schedule = LabelSchedule(self.model.tasks, self.feedback, self.windows, self.c2al)
            frames = iter_frames(log, features, surfaces=surfaces, meta=schedule.meta)
            for index, (day, frame) in enumerate(frames):
                # Day t is trained at its end: its labels as observed then (predictions are scored on
                # the matured ones); delayed feedback and window heads may train earlier days then too.
                matured = self.config.train_on_matured_labels
                frame = schedule.prepare(frame)
                if self.published is not None and not schedule.plain:  # a later day may train this one
                    for channel in self.model.channels:
                        channel.attach(frame, self.published)
                units = schedule.units(frame, training_cutoff(day), matured) if day != log.days[-1] else []
                if resume is not None and day < resume[0]:
                    seen.add_units(units)
                    bar.advance(task)
                    continue
                skip = 0
                if resume is not None and day == resume[0]:
                    if resume[2]:
                        seen.add_units(units)
                        resume = None
                        bar.advance(task)
                        continue
                    skip = resume[1]
                if self.published is not None and schedule.plain:
                    for channel in self.model.channels:
                        channel.attach(frame, self.published)
                if index > 0 and not self.model_dir.prediction(day).exists():
                    self._write_predictions(frame, day)
                if day != log.days[-1]:
                    warm = [t for t in self.model.tasks if seen.counts[t] < self.config.bias_warmup_events]
                    before = dict(seen.counts)
                    seen.add_units(units)
                    warm = [t for t in warm if seen.counts[t] > before[t]]  # only tasks this day trains
                    if skip == 0 and warm:
                        source = f"the {seen.events:,} events through day {day}"
                        note = self.start_at_base_rates(seen, source, warm if warm != self.model.tasks else None)
                        if self.progress:
                            bar.console.print(note)
                    if skip == 0 and self.pruner is not None:
                        self.pruner.begin_day(index)  # a new mask when the schedule says (resumed: restored)
                    probe = self._day_probe()
                    try:
                        for batches_done, batch in enumerate(self._unit_batches(units, index), start=1):
                            if batches_done <= skip:
                                continue
                            logits = self.train_step(batch)
                            running.update(logits[running.task].detach(), batch.labels[running.task])
                            examples += batch.size
                            if self.step % self.config.checkpoint_every == 0:
                                self._checkpoint(day, batches_done, day_finished=False)
                            if self.config.max_steps is not None and self.step >= self.config.max_steps:
                                self._checkpoint(day, batches_done, day_finished=False)
                                raise TrainingInterrupted(
                                    f"stopped after {self.step} steps (max_steps); run again to resume"
                                )
                            if batches_done % 20 == 0:
                                rate = examples / (time.perf_counter() - started)
                                bar.update(task, rate=f"{rate:,.0f}", ne=f"{running.value:.4f}")
                    finally:
                        if probe is not None:
                            probe.detach()
                    if probe is not None:
                        note = self._plan_from(probe, day)
                        if self.progress:
                            bar.console.print(note)
                    self.trained_through = day
                    if self.config.snapshots != "none":
                        self._save_weights(self.model_dir.snapshot(day))
                    self._checkpoint(day, -1, day_finished=True)
                resume = None
                bar.advance(task)
        if self.planned and self.model_dir.card.exists():  # before the weights, whose presence means "trained"
            save_dispatch_plan(self.model_dir.root, current_plan(self.model))
        if self.windows is not None and self.trained_through is not None:
            self._save_window_rates(log, surfaces)
        self._save_weights(self.model_dir.weights)
        return predictions_dir

    def _save_window_rates(self, log: EventLog, surfaces: list[str] | None) -> None:
        """A model with window heads: its advertisers' delay rates, from the delays observed before its
        training cutoff (`fxrec.objectives.window_rates`), beside the weights for serving `window_s`."""
        assert self.windows is not None and self.trained_through is not None
        rates = fit_window_rates(
            log,
            self.windows,
            self.trained_through,
            surfaces,
            group=self.feedback.group,
            prior_events=self.feedback.prior_events,
        )
        rates.save(self.model_dir.delay_rates_json)

    def _save_weights(self, path: Path) -> None:
        """The model's weights as one process holds them (a snapshot, or model.pt at the end)."""
        save_atomic(model_state(self.model), path)

    def start_at_base_rates(self, seen: LabelTally, source: str, tasks: list[str] | None = None) -> str:
        """Set every head's output bias (and the channels' own heads) to the label rate of the data
        trained on so far, with Laplace's rule of succession: (positives + 1) / (events + 2) for
        `bias_prior_events` = 2 (in general, shrunk toward 0.5 by that many pseudo-events). Rare labels
        (0.4% clicks) otherwise need thousands of steps just to leave p = 0.5. The progressive loop
        calls this before each day until `bias_warmup_events` have been trained on, so a tiny first day
        (one non-click, three clicks) sets a mild start that the next days replace, and the rate only
        ever comes from days already trained (never a later day's labels). `tasks`: only these (a window
        head starts training days after the others); None: every task. Returns what was chosen."""
        k = self.config.bias_prior_events
        tasks = self.model.tasks if tasks is None else tasks
        counts = seen.counts
        rates = {t: (seen.positives[t] + k / 2) / (counts[t] + k) if counts[t] + k > 0 else 0.5 for t in tasks}
        self.model.heads.init_bias(rates)
        for channel in self.model.channels:
            channel.init_bias(rates)
        raw = {t: seen.positives[t] / counts[t] if counts[t] else float("nan") for t in tasks}
        chosen = ", ".join(f"{t} {raw[t]:.4f} -> {rates[t]:.4f}" for t in tasks)
        return f"{self.model_dir.name}: output bias from the label rate of {source} (prior {k:g} events): {chosen}"

    def _unit_batches(self, units: list[TrainingUnit], day_index: int):
        """Every training pass of the day, one after another (counted as one day's batches)."""
        for number, unit in enumerate(units):
            yield from self._batches(unit.frame, day_index, unit.rows, number)

    def _batches(self, frame: EventFrame, day_index: int, rows: torch.Tensor | None = None, unit: int = 0):
        """A day's training batches; shuffled within the day (seeded per day, so resume is exact).
        `rows`: only these rows of the frame; `unit`: which of the day's passes (its own seed).

        Shuffling inside the training day leaks nothing: every event's features are as of its own
        ts, and the model trained on day t is only evaluated on day t+1.
        """
        size = self.config.batch_size
        count = frame.num_rows if rows is None else len(rows)
        for repeat in range(self.config.passes_per_day):
            if self.config.shuffle_within_day:
                order = self.day_order(count, day_index, repeat, unit)
                order = order if rows is None else rows[order]
            else:
                order = torch.arange(count) if rows is None else rows
            for start in range(0, count, size):
                yield self._take(frame, order[start : start + size])

    def day_order(self, count: int, day_index: int, repeat: int, unit: int = 0) -> torch.Tensor:
        """The shuffled order of a day's `count` events for one pass (seeded per day, pass and unit)."""
        seed = self.config.seed * 1_000_003 + day_index * 101 + repeat + unit * 7_919
        return torch.randperm(count, generator=torch.Generator().manual_seed(seed))

    def _take(self, frame: EventFrame, rows: torch.Tensor) -> EventFrame:
        """One global batch, as this process trains it (all of it; a rank of a sharded run: its stripe)."""
        return frame.take(rows)

    def _write_predictions(self, frame: EventFrame, day: str) -> None:
        predictions = self.predict(frame)
        columns = {
            "event_id": frame.meta["event_id"].numpy(),
            "user_id": frame.meta["user_id"].numpy(),
            "ts": frame.meta["ts"].numpy(),
            "surface": frame.meta["surface"].numpy(),
            # Which model version made these predictions: always a day strictly before `day`.
            "trained_through": pa.array([self.trained_through or ""] * frame.num_rows),
        }
        for task, probs in predictions.items():
            # Matured labels: evaluation judges a prediction by the final outcome, however late it came.
            columns[f"label_{task}"] = frame.labels[task].numpy()
            columns[f"pred_{task}"] = probs.astype(np.float32)
        path = self.model_dir.prediction(day)
        tmp = path.with_name(f".{path.name}.tmp")
        write_compact(pa.table(columns), tmp)
        tmp.replace(path)
