"""`fxrec funnel`: the ads funnel over a run's logged requests, stage by stage.

For each evaluation day t (the candidate log's last `funnel.eval_days` days) and each sampled request
of the final-stage VM's surfaces (at most `funnel.max_requests_per_day`):

    the request's eligible ads (candidate log)
      -> retrieval (ALURE by default: the FM user embeddings published before t, clicks before t)
      -> the early-stage ranker's top `esr_k` (trained on the impression log before t)
      -> the final-stage VM's top `final_k` (the VM as it served day t)

`fxrec.funnel.cascade` chains the stages and tallies, per stage: the ads it hands on, the recall of
the ads the user clicked that day and the final stage's value it keeps against scoring every
eligible ad with the final stage (the end-to-end value). The job writes `funnel.json` and the
recall-vs-K plot (`funnel_recall.png`) into the run, and the ESR it trained last into `funnel/`
(what `POST /v1/funnel` serves). Every input is checked first: a run without a candidate log, a
published FM (for ALURE) or a trained VM is an InputError and nothing is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fxrec.config import FunnelConfig, RunConfig
from fxrec.data.candidates import CANDIDATE_SPEC_FILE, CandidateLog, candidates_dir
from fxrec.data.eventlog import EventLog
from fxrec.errors import InputError
from fxrec.funnel import Engagements, PopularityRetriever, Retriever
from fxrec.funnel.cascade import (
    STAGES,
    FunnelTally,
    configured_retriever,
    retrieval_stage,
    run_request,
    top_by,
)
from fxrec.funnel.soft_recall import soft_recall_per_request
from fxrec.funnel.value import HIDE_PENALTY, value
from fxrec.run import Run

console = Console(width=160)


# -- inputs -------------------------------------------------------------------------------------------
@dataclass
class FunnelInputs:
    """Everything `fxrec funnel` reads, checked: the run, its config and log, the candidate log, the VM."""

    run: Run
    config: RunConfig
    funnel: FunnelConfig
    log: EventLog
    candidates: CandidateLog
    vm: str
    surfaces: list[str]
    days: list[str]
    hide_penalty: float
    publish_dir: Path | None = None


def default_vm(config: RunConfig, log: EventLog) -> str | None:
    vms = config.expand_vms(log.spec.surfaces)
    return vms[0].name if vms else None


def check_inputs(run: Path | str, config: RunConfig | None = None) -> FunnelInputs:
    """The funnel's inputs, or an InputError naming every problem (nothing is written either way)."""
    run_dir = Run(run, config)
    if config is None:
        if not run_dir.config_path.exists():
            raise InputError(f"{run_dir.root}: not a run (no config.yaml); train a run first (`fxrec demo`)")
        config = run_dir.config
    try:
        log = run_dir.event_log()
    except (InputError, FileNotFoundError) as error:
        raise InputError(f"{run_dir.root}: the run's event log cannot be read ({error})") from None
    funnel = config.funnel
    problems = []
    candidates = None
    if not (candidates_dir(log.path) / CANDIDATE_SPEC_FILE).exists():
        problems.append(
            f"{log.path}: no candidate log (events/candidates/{CANDIDATE_SPEC_FILE}); simulate the run's log "
            "with `candidate_log_rate` > 0 (e.g. 0.01) or import one (fxrec.data.candidates.write_candidates)"
        )
    else:
        candidates = CandidateLog(log.path)
    vm = funnel.vm or default_vm(config, log)
    surfaces: list[str] = []
    if vm is None:
        problems.append(f"{run_dir.root}: the run config has no VM for the final stage (set `funnel.vm`)")
    elif not run_dir.model(vm).trained():
        problems.append(
            f"{run_dir.root}: the final-stage VM {vm!r} is not trained (trained models: "
            f"{run_dir.trained_models() or 'none'}); train it first (`fxrec train vm --name {vm}`)"
        )
    else:
        vm_config = next((m for m in config.expand_vms(log.spec.surfaces) if m.name == vm), None)
        surfaces = (vm_config.surfaces if vm_config is not None else None) or list(log.spec.surfaces)
    publish_dir = run_dir.publish_dir(config.fm.name)
    if funnel.retriever == "alure" and not any(publish_dir.glob("day=*.parquet")):
        problems.append(
            f"{publish_dir}: no published FM user embeddings for ALURE retrieval; publish the FM first "
            "(`fxrec publish`) or set `funnel.retriever` to popularity, item_to_item or two_tower"
        )
    days: list[str] = []
    if candidates is not None:
        later = [d for d in candidates.days if d > log.days[0]]  # day t needs days before it to learn from
        days = later[-funnel.eval_days :]
        if not days:
            problems.append(
                f"{candidates.path}: no logged day after the log's first ({log.days[0]}); the funnel of day t "
                "learns from the days before it"
            )
    if days and vm is not None and run_dir.model(vm).trained():
        model_dir = run_dir.model(vm)
        through = model_dir.trained_through()
        unserved = [
            d
            for d in days
            if not any(s < d for s in model_dir.snapshot_days()) and not (through is not None and through < d)
        ]
        if unserved:
            problems.append(
                f"{model_dir.root}: the final-stage VM {vm!r} has no weights trained only before {unserved[0]} "
                "(each day is scored by the VM that served it); train it with `train: {vm_snapshots: true}`"
            )
    if problems:
        raise InputError(*problems)
    assert candidates is not None and vm is not None
    penalty = HIDE_PENALTY if funnel.hide_penalty is None else funnel.hide_penalty
    return FunnelInputs(run_dir, config, funnel, log, candidates, vm, surfaces, days, penalty, publish_dir)


# -- requests of a day --------------------------------------------------------------------------------
class SampledCandidates(CandidateLog):
    """A candidate log read through a filter: day -> the event ids (requests) to keep."""

    def __init__(self, log: CandidateLog, requests: dict[str, np.ndarray]):
        self.path, self.spec, self.days = log.path, log.spec, [d for d in log.days if d in requests]
        self._log, self._requests = log, requests

    def read_day(self, day: str, columns: list[str] | None = None) -> pa.Table:
        wanted = None if columns is None else list(dict.fromkeys(["event_id", *columns]))
        table = self._log.read_day(day, wanted)
        keep = pc.is_in(table.column("event_id"), value_set=pa.array(self._requests.get(day, []), pa.int64()))
        table = table.filter(keep)
        return table if columns is None else table.select(columns)


def sample_requests(inputs: FunnelInputs, day: str) -> np.ndarray:
    """The day's logged requests on the VM's surfaces, at most `max_requests_per_day` (seeded), sorted."""
    logged = inputs.candidates.requests(day)
    impressions = inputs.log.read_day(day, ["event_id", "surface"])
    on_surface = pc.is_in(impressions.column("surface"), value_set=pa.array(inputs.surfaces)).to_numpy(
        zero_copy_only=False
    )
    requests = np.intersect1d(logged, impressions.column("event_id").to_numpy()[on_surface])
    cap = inputs.funnel.max_requests_per_day
    if cap is not None and len(requests) > cap:
        rng = np.random.default_rng([inputs.funnel.seed, int(day.replace("-", ""))])
        requests = np.sort(rng.choice(requests, size=cap, replace=False))
    return requests.astype(np.int64)


@dataclass
class RequestResult:
    """One request through the funnel: who, and the ads each stage handed on (best first)."""

    event_id: int
    user_id: int
    retrieved: list[int]
    ranked: list[int]
    winners: list[int]
    winner_values: list[float]


@dataclass
class DayResult:
    day: str
    tally: FunnelTally
    requests: list[RequestResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


def _groups(event_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique ids in order of first appearance, start, end) of runs of equal ids (rows are grouped)."""
    boundaries = np.flatnonzero(event_ids[1:] != event_ids[:-1]) + 1
    starts = np.concatenate([[0], boundaries]).astype(np.int64)
    ends = np.concatenate([boundaries, [len(event_ids)]]).astype(np.int64)
    return event_ids[starts], starts, ends


def funnel_day(
    inputs: FunnelInputs,
    day: str,
    retriever: Retriever,
    esr,
    final,
    engagements: Engagements,
    requests: np.ndarray | None = None,
    progress: Progress | None = None,
    bars: dict[str, int] | None = None,
) -> DayResult:
    """Day `day`'s sampled requests through retrieval, `esr` (its `score_day(day, rows, histories)`:
    the ESR's value per candidate row) and `final` (a FinalStage), tallied (see fxrec.funnel.cascade)."""
    from fxrec.funnel.candidate_rows import iter_candidate_rows

    funnel = inputs.funnel
    requests = sample_requests(inputs, day) if requests is None else np.asarray(requests, np.int64)
    sampled = SampledCandidates(inputs.candidates, {day: requests})
    ks = sorted(set(funnel.recall_ks))
    result = DayResult(day, FunnelTally(funnel.final_k, ks))

    started = time.perf_counter()
    history = engagements.before(day)
    retriever.prepare(day, history)
    filler = PopularityRetriever()
    filler.prepare(day, history)
    result.seconds["retrieval"] += time.perf_counter() - started

    features = list({f.name: f for f in [*final.features, *esr.features]}.values())
    clicked = engagements.on(day)
    for _, rows, histories in iter_candidate_rows(inputs.log, features, [day], sampled):
        oracle = sampled.read_day(
            day,
            [
                c
                for c in ("oracle_p_click", "oracle_p_conversion", "oracle_p_hide")
                if c in inputs.candidates.spec.oracle
            ],
        )
        started = time.perf_counter()
        esr_scores = np.asarray(esr.score_day(day, rows, histories), np.float64)
        result.seconds["esr"] += time.perf_counter() - started
        _advance(progress, bars, "esr", len(np.unique(rows.column("event_id").to_numpy())))
        started = time.perf_counter()
        final_scores = final.score_day(day, rows, histories).column("value").to_numpy().astype(np.float64)
        result.seconds["final"] += time.perf_counter() - started
        _advance(progress, bars, "final", len(np.unique(rows.column("event_id").to_numpy())))
        oracle_values = _oracle_values(oracle, rows, inputs.hide_penalty)

        event_ids = rows.column("event_id").to_numpy()
        items = rows.column("item_id").to_numpy().astype(np.int64)
        users_of_rows = rows.column("user_id").to_numpy().astype(np.int64)
        ids, starts, ends = _groups(event_ids)
        users = users_of_rows[starts]
        started = time.perf_counter()
        width = max(funnel.retrieval_k, max(ks)) * 4
        lists = retriever.retrieve(np.unique(users), width)
        by_user = dict(zip(np.unique(users).tolist(), lists, strict=True))
        result.seconds["retrieval"] += time.perf_counter() - started
        _advance(progress, bars, "retrieval", len(ids))
        soft = ([], [], [])  # the retrieved ads' ESR scores, final values and requests
        for event_id, start, end, user in zip(ids.tolist(), starts, ends, users.tolist(), strict=True):
            eligible = items[start:end]
            esr_of = dict(zip(eligible.tolist(), esr_scores[start:end].tolist(), strict=True))
            final_of = dict(zip(eligible.tolist(), final_scores[start:end].tolist(), strict=True))
            funnelled = run_request(
                by_user[user],
                eligible,
                filler.ranked,
                lambda chosen, table=esr_of: np.array([table[int(i)] for i in chosen]),
                lambda chosen, table=final_of: np.array([table[int(i)] for i in chosen]),
                funnel.retrieval_k,
                funnel.esr_k,
                funnel.final_k,
            )
            curves = {
                "retrieval": retrieval_stage(by_user[user], eligible, filler.ranked, max(ks)),
                "esr": top_by(funnelled.retrieved, funnelled.esr_scores, max(ks)),
                "final_everything": top_by(eligible, final_scores[start:end], max(ks)),
            }
            soft[0].append(funnelled.esr_scores)
            soft[1].append(np.array([final_of[int(i)] for i in funnelled.retrieved]))
            soft[2].append(np.full(len(funnelled.retrieved), event_id))
            user_clicks = clicked.item[clicked.user == user]
            result.tally.add(
                funnelled,
                eligible,
                final_scores[start:end],
                user_clicks,
                curves,
                None if oracle_values is None else oracle_values[start:end],
            )
            result.requests.append(
                RequestResult(
                    int(event_id),
                    int(user),
                    funnelled.retrieved.tolist(),
                    funnelled.ranked.tolist(),
                    funnelled.winners.tolist(),
                    funnelled.winner_values().tolist(),
                )
            )
        if soft[0] and sum(len(g) for g in soft[2]):
            _, per_request = soft_recall_per_request(*(np.concatenate(part) for part in soft), funnel.esr_k)
            result.tally.add_soft_recall(per_request)
    return result


def _advance(progress: Progress | None, bars: dict[str, int] | None, stage: str, requests: int) -> None:
    if progress is not None and bars is not None:
        progress.advance(bars[stage], requests)


def _oracle_values(oracle: pa.Table, rows: pa.Table, hide_penalty: float) -> np.ndarray | None:
    """The simulator's true value of each candidate row (None without the oracle columns)."""
    if "oracle_p_click" not in oracle.column_names or "oracle_p_conversion" not in oracle.column_names:
        return None
    if oracle.num_rows != rows.num_rows:
        return None
    p_hide = oracle.column("oracle_p_hide").to_numpy() if "oracle_p_hide" in oracle.column_names else 0.0
    return np.asarray(
        value(
            rows.column("bid").to_numpy().astype(np.float64),
            oracle.column("oracle_p_click").to_numpy().astype(np.float64),
            oracle.column("oracle_p_conversion").to_numpy().astype(np.float64),
            np.asarray(p_hide, np.float64),
            hide_penalty,
        ),
        np.float64,
    )


# -- the early-stage ranker ---------------------------------------------------------------------------
class EsrStage:
    """The ESR as a funnel stage: `score_day(day, rows, histories)` its value of each candidate row
    (`fxrec.funnel.esr.rank.esr_scores`: a user vector per request, an ad vector per ad)."""

    def __init__(self, model, features):
        self.model, self.esr_features = model.eval(), features
        self.features = features.specs()

    def score_day(self, day: str, rows: pa.Table, histories) -> np.ndarray:
        from fxrec.funnel.esr.rank import esr_scores

        del day
        return esr_scores(self.model, self.esr_features, rows, histories)["score"]


def teacher_scores(inputs: FunnelInputs, final, before: str) -> dict[str, pa.Table]:
    """The final stage's scores of the sampled requests of each logged day before `before` (after the
    log's first), each day scored by the VM that served it: what the ESR distils from."""
    days = [d for d in inputs.candidates.days if inputs.log.days[0] < d < before]
    sampled = SampledCandidates(inputs.candidates, {d: sample_requests(inputs, d) for d in days})
    return dict(final.score_log(days, candidates=sampled)) if days else {}


def train_esr_for_day(inputs: FunnelInputs, day: str, teacher: dict | None, previous=None, after=None):
    """The ESR that serves day `day`: trained on the impression log before it (`esr_epochs` passes;
    continuing `previous` on the days from `after` on), distilled from `teacher` (the final stage's
    scores of earlier days' requests) when `funnel.distill` (fxrec.funnel.esr.train)."""
    from fxrec.funnel.esr.features import EsrFeatures
    from fxrec.funnel.esr.train import EsrTrainConfig, train_esr

    features = previous.esr_features if previous is not None else EsrFeatures(inputs.log.spec)
    config = EsrTrainConfig(
        passes=inputs.funnel.esr_epochs, seed=inputs.funnel.seed, hide_penalty=inputs.hide_penalty
    )
    model = train_esr(
        inputs.log,
        before=day,
        teacher={d: t for d, t in (teacher or {}).items() if d < day} or None,
        config=config,
        features=features,
        model=previous.model if previous is not None else None,
        after=after,
    )
    return EsrStage(model, features)


# -- the job ------------------------------------------------------------------------------------------
def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )


def run_funnel(
    run: Path | str,
    config: RunConfig | None = None,
    progress: bool = True,
    quiet: bool = False,
    esr_for_day: Callable[[str], EsrStage] | None = None,
) -> dict:
    """`fxrec funnel`: every evaluation day's requests through the three stages; writes funnel.json,
    funnel_recall.png and the last ESR (funnel/esr) into the run and returns what funnel.json holds.
    `esr_for_day(day)`, when given, is the ESR of each day instead of one trained here (it must have
    been trained on days before `day` only)."""
    from fxrec.funnel.final_stage import FinalStage

    inputs = check_inputs(run, config)
    funnel = inputs.funnel
    final = FinalStage.from_run(inputs.run, inputs.vm, hide_penalty=inputs.hide_penalty)
    engagements = Engagements.from_log(inputs.log)
    retriever = configured_retriever(inputs.funnel, inputs.publish_dir, inputs.log.spec)
    total = FunnelTally(funnel.final_k, sorted(set(funnel.recall_ks)))
    per_day, seconds = {}, {**dict.fromkeys(STAGES, 0.0), "esr_training": 0.0}
    esr = None
    requests = {day: sample_requests(inputs, day) for day in inputs.days}
    count = sum(len(r) for r in requests.values())
    with _progress(progress and not quiet) as bar:
        bars = {
            "retrieval": bar.add_task(f"retrieval ({funnel.retriever})", total=count),
            "esr": bar.add_task(f"early-stage ranker (top {funnel.esr_k})", total=count),
            "final": bar.add_task(f"final stage {inputs.vm} (top {funnel.final_k})", total=count),
        }
        started = time.perf_counter()
        distill = funnel.distill and esr_for_day is None
        teacher = teacher_scores(inputs, final, inputs.days[-1]) if distill else None
        seconds["esr_training"] = time.perf_counter() - started
        previous_day = None
        for day in inputs.days:
            started = time.perf_counter()
            if esr_for_day is not None:
                esr = esr_for_day(day)
            else:
                esr = train_esr_for_day(inputs, day, teacher, esr, previous_day)
            seconds["esr_training"] += time.perf_counter() - started
            previous_day = day
            day_result = funnel_day(
                inputs, day, retriever, esr, final, engagements, requests[day], progress=bar, bars=bars
            )
            total.absorb(day_result.tally)
            per_day[day] = day_result.tally.result()
            for name in STAGES:
                seconds[name] += day_result.seconds[name]
    content = _content(inputs, total, per_day, seconds, final.note)
    inputs.run.funnel_dir.mkdir(parents=True, exist_ok=True)
    if esr is not None:
        esr.model.notes = {**getattr(esr.model, "notes", {}), "serves_day": inputs.days[-1]}
        esr.model.save(inputs.run.funnel_dir / "esr")
    inputs.run.funnel_json.write_text(json.dumps(content, indent=2))
    _write_plot(content, inputs.run.funnel_png)
    if not quiet:
        print_funnel(content)
        console.print(f"funnel: {inputs.run.funnel_json} and {inputs.run.funnel_png}", highlight=False)
    return content


def _content(inputs: FunnelInputs, tally: FunnelTally, per_day: dict, seconds: dict, note: str) -> dict:
    funnel = inputs.funnel
    result = tally.result()
    for name, k in (("retrieval", funnel.retrieval_k), ("esr", funnel.esr_k), ("final", funnel.final_k)):
        result["stages"][name].update(k=k, seconds=round(seconds[name], 3))
    return {
        "esr_training_seconds": round(seconds["esr_training"], 2),
        "vm": inputs.vm,
        "retriever": funnel.retriever,
        "days": inputs.days,
        "surfaces": inputs.surfaces,
        "hide_penalty": inputs.hide_penalty,
        "config": funnel.model_dump(),
        **result,
        "per_day": per_day,
        "notes": [n for n in [note] if n],
    }


def _write_plot(content: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from fxrec.report.funnel import recall_vs_k_figure

    figure = recall_vs_k_figure(content)
    if figure is not None:
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)


def print_funnel(content: dict) -> None:
    """The funnel's per-stage table, as `fxrec funnel` prints it."""
    table = Table(
        title=f"funnel over {content['requests']:,} requests of {', '.join(content['days'])}: "
        f"{content['retriever']} -> ESR -> {content['vm']}"
    )
    for column in ("stage", "K", "ads handed on", "recall of clicked", "value kept", "seconds"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    from fxrec.report.funnel import funnel_table

    for row in funnel_table(content):
        table.add_row(
            row["stage"], str(row["k"]), row["size"], row["recall"], row["value_kept"], row["seconds"]
        )
    console.print(table)
    kept = content.get("end_to_end_value_kept")
    line = (
        f"end to end: {100 * kept:.1f}% of the value of scoring every candidate with the final stage"
        if kept is not None
        else "end to end: no value to keep (every candidate is worth nothing)"
    )
    if content.get("oracle_value_kept") is not None:
        line += (
            f"; true value (simulator) of the winners: {100 * content['oracle_value_kept']:.1f}% of the best "
            f"ads' (scoring everything: {100 * content['oracle_value_kept_scoring_everything']:.1f}%)"
        )
    console.print(line, highlight=False)
    soft = content["stages"]["esr"].get("soft_recall")
    if soft is not None:
        console.print(
            f"the ESR's soft recall@{content['stages']['esr']['k']} of the final stage's value over the retrieved "
            f"ads: {100 * soft:.1f}%",
            highlight=False,
        )
    for note in content.get("notes", []):
        console.print(f"note: {note}", highlight=False)
