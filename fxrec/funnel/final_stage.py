"""The final stage over a candidate log: a trained VM's click, conversion and hide probabilities for
every logged candidate, and the value (`fxrec.funnel.value`) the final stage ranks them by.

Each candidate is scored on its candidate row (`fxrec.funnel.candidate_rows`): the request's
impression row with the candidate's ad in it, so the winner scores exactly as its impression does.
Day d's candidates are scored by the VM as it served day d: the snapshot trained through the day
before (`vm_snapshots: true` keeps one per day), or the final weights when they were trained through
an earlier day only; anything trained on day d or later is refused (it would have seen the outcome).

The VM's heads: `click` is P(click); `conversion`, trained on the impression log's conversions, is
P(click and conversion), turned into the formula's post-click rate by `value.post_click_conversion`;
`hide` is P(hide), the simulator's quality event (`quality_events: true`; add `hide` to the VM's
tasks). A VM without a hide head scores p_hide = 0, and `FinalStage.note` says so.

Transfer channels: those that feed the VM nothing at inference (kd, exfm) and those whose input is
the user's (sum: the published user embedding; loopfm: the user's published codes) are joined on the
request's event as for its impression; a channel whose published input belongs to the impression's
ad (tae) is refused, since a candidate would read the winner's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from fxrec.data.batches import EventFrame
from fxrec.data.candidates import CandidateLog
from fxrec.data.eventlog import EventLog
from fxrec.data.schema import DatasetSpec
from fxrec.factory import load_model
from fxrec.funnel.candidate_rows import History, iter_candidate_rows
from fxrec.funnel.value import HIDE_PENALTY, post_click_conversion, value
from fxrec.models.ranking import RankingModel
from fxrec.run import Run, RunError
from fxrec.transfer.published import PublishedFM

# Channels whose inference input is the user's or nothing: a candidate may read its request's.
USER_SIDE_CHANNELS = {"sum", "loopfm"}
SCORE_COLUMNS = ("p_click", "p_conversion", "p_hide", "value")


class FinalStage:
    """A trained VM as the funnel's final stage. `FinalStage.from_run(run, "vm")` loads it by name;
    `score_day(day, rows, histories)` scores candidate rows; `score_log(days)` every logged day."""

    def __init__(
        self,
        model: RankingModel,
        spec: DatasetSpec,
        log: EventLog,
        published: PublishedFM | None = None,
        hide_penalty: float = HIDE_PENALTY,
        weights_for_day=None,
        batch_size: int = 8192,
    ):
        self.model, self.spec, self.log = model.eval(), spec, log
        self.published = published
        self.hide_penalty = hide_penalty
        self.batch_size = batch_size
        # day -> (model directory, weights file) that served it (from_run), or None: `model` as given
        self._weights_for_day = weights_for_day
        self._loaded: tuple[Path, str] | None = None
        self.features = [spec.feature(name) for name in model.features]
        channels = list(getattr(model, "channels", []))
        refused = [c.name for c in channels if c.num_tokens > 0 and c.name not in USER_SIDE_CHANNELS]
        if refused:
            raise RunError(
                f"final stage: channel(s) {refused} feed the VM an input published for the impression's ad; "
                f"a candidate would read the winner's. Usable channels: kd, exfm, {sorted(USER_SIDE_CHANNELS)}"
            )
        if any(c.num_tokens > 0 for c in channels) and published is None:
            raise RunError(
                f"final stage: channels {[c.name for c in channels]} need the published FM outputs"
            )
        self.has_hide = "hide" in model.tasks
        missing = [t for t in ("click", "conversion") if t not in model.tasks]
        if missing:
            raise RunError(f"final stage: the VM has no {missing} head(s); its tasks: {model.tasks}")
        self.note = (
            ""
            if self.has_hide
            else "the final-stage VM has no hide head: p_hide = 0 (train it with `hide` among its tasks on a "
            "log simulated with `quality_events: true`)"
        )

    @classmethod
    def from_run(
        cls, run: Path | str | Run, name: str, hide_penalty: float = HIDE_PENALTY, batch_size: int = 8192
    ) -> FinalStage:
        """The run's trained model `name`; each day is scored by the weights that served it."""
        run = run if isinstance(run, Run) else Run(run)
        model_dir = run.model(name)
        if not model_dir.trained():
            raise RunError(f"{run.root}: no trained model {name!r}; trained models: {run.trained_models()}")
        model, config, spec = load_model(model_dir.root)
        log = run.event_log()
        channels = config.channel_specs()
        published = PublishedFM(run.publish_dir(config.fm, config.fm_delay)) if channels else None

        def weights_for_day(day: str) -> tuple[Path, str]:
            earlier = [d for d in model_dir.snapshot_days() if d < day]
            if earlier:
                return model_dir.root, str(model_dir.snapshot(earlier[-1]).relative_to(model_dir.root))
            through = model_dir.trained_through()
            if through is not None and through < day:
                return model_dir.root, model_dir.weights.name
            raise RunError(
                f"final stage: model {name!r} has no weights trained only before {day} (snapshots: "
                f"{model_dir.snapshot_days() or 'none'}, trained through {through}); train it with "
                "`train: {vm_snapshots: true}` to score every day with the VM that served it"
            )

        return cls(model, spec, log, published, hide_penalty, weights_for_day, batch_size)

    def _use_weights_of(self, day: str) -> None:
        if self._weights_for_day is None:
            return
        root, weights = self._weights_for_day(day)
        if (root, weights) != self._loaded:
            self.model = load_model(root, weights)[0]  # eval mode, its dispatch plan applied
            self._loaded = (root, weights)

    @torch.no_grad()
    def probabilities(self, day: str, rows: pa.Table, histories: History | None) -> dict[str, np.ndarray]:
        """{task: (N,)} the VM's probabilities on candidate rows of `day` (every head it has)."""
        self._use_weights_of(day)
        frame = EventFrame(rows, self.spec, self.features, histories)
        frame.day = day
        if self.published is not None:
            for channel in self.model.channels:
                channel.attach(frame, self.published)
        chunks: dict[str, list[np.ndarray]] = {t: [] for t in self.model.tasks}
        for batch in frame.batches(self.batch_size):
            logits = self.model(batch).logits
            for task in self.model.tasks:
                chunks[task].append(torch.sigmoid(logits[task]).numpy())
        return {t: np.concatenate(v) if v else np.zeros(0, np.float32) for t, v in chunks.items()}

    def score_day(self, day: str, rows: pa.Table, histories: History | None) -> pa.Table:
        """event_id, item_id, user_id, ts, bid, won (when given), p_click, p_conversion (post-click),
        p_hide and value for each candidate row of `day`."""
        probs = self.probabilities(day, rows, histories)
        p_click = probs["click"].astype(np.float64)
        p_conversion = post_click_conversion(p_click, probs["conversion"].astype(np.float64))
        p_hide = probs["hide"].astype(np.float64) if self.has_hide else np.zeros_like(p_click)
        bid = rows.column("bid").to_numpy().astype(np.float64)
        columns = {
            name: rows.column(name)
            for name in ("event_id", "item_id", "user_id", "ts")
            if name in rows.column_names
        }
        columns["bid"] = rows.column("bid")
        if "won" in rows.column_names:
            columns["won"] = rows.column("won")
        columns.update(
            p_click=pa.array(p_click.astype(np.float32)),
            p_conversion=pa.array(p_conversion.astype(np.float32)),
            p_hide=pa.array(p_hide.astype(np.float32)),
            value=pa.array(value(bid, p_click, p_conversion, p_hide, self.hide_penalty).astype(np.float32)),
        )
        return pa.table(columns)

    def score_log(
        self, days: list[str] | None = None, candidates: CandidateLog | None = None
    ) -> Iterator[tuple[str, pa.Table]]:
        """(day, scores) for each logged day of `days` (default: every day after the first), in order."""
        candidates = candidates if candidates is not None else CandidateLog(self.log.path)
        days = days if days is not None else [d for d in candidates.days if d > self.log.days[0]]
        for day, rows, histories in iter_candidate_rows(self.log, self.features, days, candidates):
            yield day, self.score_day(day, rows, histories)
