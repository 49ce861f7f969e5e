"""The ads funnel: ALURE graph retrieval vs its baselines, then early-stage rankers vs the final stage.

One simulated log (bench/_common.simulated_log); an FM with a SUM user tower is trained progressively
(a snapshot per day) and published (delay 0), so the user embeddings of day d come from the snapshot
trained through the day before d. Every retrieval of evaluation day t sees only the clicks before t
(and ALURE only embeddings published before t): `fxrec.funnel.evaluate_retrieval`. Reported:
recall@{50, 200, 1000} of the ads each user clicked on day t, averaged over the evaluation days, for

- alure: own recent clicks, then the ads clicked by the user's 50 nearest neighbours (faiss HNSW over the
  published user embeddings) in the last 3 days, smoothed toward the window's click share (300 pseudo-clicks);
- alure_exact: the same with exact neighbour search (the reference for HNSW);
- alure_oracle: the same graph retrieval over the simulator's true user interests at the start of the
  day (a reference for what better user embeddings would give, not a method: the world is hidden);
- popularity, item_to_item (co-clicks of the last 7 days), two_tower (trained progressively on the clicks).

Lists shorter than K are filled up with the popularity list (the same for every method). Also reported:
how much the user graph knows, as the mean true-interest cosine between a user and their neighbours
(FM graph, oracle graph, random users).

Early-stage ranking, on the same log (its candidate log and hide events on; the impression log is
otherwise the same): the final stage is a VM over every surface with click, conversion and hide heads
and the FM's published user embedding (`sum`), trained progressively with a snapshot per day, so each
day's logged candidates are scored by the VM that served that day (`fxrec.funnel.final_stage`). For
each evaluation day t, every ESR is trained afresh on the days before t (`fxrec.funnel.esr.train_esr`:
a daily refresh, reading nothing of day t or later):

- esr_mt_distilled: the two-tower multi-task ESR, distilled from the final stage as it stands at the
  start of t (the VM snapshot that serves t) scoring the logged candidates of the days before t;
- esr_mt: the same without distillation;
- esr_single: one two-tower model per task (click; post-click conversion on clicks; hide), combined by
  the same value formula;
- references: bid alone, random, and the final stage's own value against the simulator's oracle value.

Reported: soft recall@{10, 50} against the final stage's value over the evaluation days' candidates,
and per-task NE / AUC on their impressions.

End to end (`bench/_funnel_end_to_end.py`): `fxrec funnel` over the evaluation days' logged requests
(ALURE -> esr_mt_distilled, top 50 -> the final stage, top 1; at most 200 requests a day): per stage the
ads handed on, recall of clicked ads and the final stage's value kept, the end-to-end value kept against
scoring every candidate with the final stage; and the p50 / p99 milliseconds per stage of one
`POST /v1/funnel` request (its path in process, requests replayed from the last day).

    python bench/funnel.py [--quick] [--out FILE]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import torch
from _common import parse_args, print_table, simulated_log, write_result
from _funnel_end_to_end import end_to_end, request_latency

from fxrec.config import FMConfig, RunConfig, VMConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.simulator import AdsWorld, SimulatorConfig
from fxrec.funnel import (
    AlureRetriever,
    CoEngagementRetriever,
    Engagements,
    PopularityRetriever,
    TwoTowerRetriever,
    evaluate_retrieval,
    exact_neighbours,
    published_user_embeddings,
)
from fxrec.funnel.esr import TASKS, EsrFeatures, SeparateRankers
from fxrec.funnel.esr.evaluate import evaluate_rankers, prediction_metrics
from fxrec.funnel.esr.train import EsrTrainConfig, train_esr
from fxrec.funnel.final_stage import FinalStage
from fxrec.run import Run

# 14 days of 72,000 impressions, 10,000 users (+300 a day); a candidate log of 0.3% of the requests
SIMULATOR = SimulatorConfig(seed=11, candidate_log_rate=0.003, quality_events=True)
QUICK = {
    "candidate_log_rate": 0.01,
    "days": 5,
    "impressions_per_day": 12_000,
    "users": 2_000,
    "new_users_per_day": 50,
    "ads": 600,
    "new_ads_per_day": 40,
}
EVAL_DAYS, QUICK_EVAL_DAYS = 4, 2
USER_FEATURES = [
    "user_id",
    "country",
    "age_bucket",
    "device",
    "user_segments",
    "user_past_impressions",
    "hist_item_id",
    "hist_advertiser_id",
]
FM = FMConfig(
    name="fm",
    role="fm",
    tasks=["click", "conversion"],  # as before the log had hide events: the retrieval part is unchanged
    embedding_dim=16,
    dense_layers=[32],
    interaction={"name": "dcnv2", "num_layers": 2, "low_rank": 16},
    heads={"hidden": [64]},
    user_tower={"features": USER_FEATURES, "dim": 32, "hidden": [64]},
)
# The final stage: one VM over every surface, its own features plus the FM's user embedding.
VM = VMConfig(
    name="vm",
    role="vm",
    tasks=["click", "conversion", "hide"],
    embedding_dim=16,
    dense_layers=[32],
    interaction={"name": "dcnv2", "num_layers": 2, "low_rank": 16},
    heads={"hidden": [64, 32]},
    channels=["sum"],
)
FUNNEL = {"max_requests_per_day": 200}  # `fxrec funnel` end to end: K = 200 -> 50 -> 1 (the defaults)
ESR = EsrTrainConfig()  # every ESR: one pass over the days before the first evaluation day, batches of 256
THREADS = 2


def true_interests(simulator: SimulatorConfig, days: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per day: the users arrived before it and their true interests at its start (the world replayed)."""
    world, next_id, out = AdsWorld(simulator), 0, {}
    for t, day in enumerate(days):
        arrived = np.flatnonzero(world.user_arrival < t).astype(np.int64)
        out[day] = (arrived, world.interest[arrived].copy())
        next_id += world.day(t, next_id).num_rows
        world.drift()
    return out


def graph_quality(publish_dir: Path, interests: dict, days: list[str], k: int = 50) -> dict[str, float]:
    """Mean true-interest cosine between users and their k neighbours: FM graph, oracle graph, random."""
    rng = np.random.default_rng(0)
    values: dict[str, list[float]] = {"fm_graph": [], "oracle_graph": [], "random": []}
    for day in days:
        users, vectors, _ = published_user_embeddings(publish_dir, day)
        known, interest = interests[day]
        rows = np.searchsorted(known, users)
        keep = rows < len(known)
        keep[keep] = known[rows[keep]] == users[keep]
        vectors, truth = vectors[keep], interest[rows[keep]]
        for name, index in (
            ("fm_graph", exact_neighbours(vectors, k)[0]),
            ("oracle_graph", exact_neighbours(truth, k)[0]),
            ("random", rng.integers(0, len(truth), (len(truth), k))),
        ):
            values[name].append(float((truth[:, None, :] * truth[index]).sum(-1).mean()))
    return {name: round(float(np.mean(v)), 4) for name, v in values.items()}


def early_stage(config: RunConfig, run: Path, log: EventLog, days: list[str], timings: dict):
    """The final-stage VM and its scores on the logged candidates of `days`; for each of `days`, the
    ESRs trained on the days before it (the distilled one on the final stage as it stands that day,
    scoring the earlier days' candidates); their soft recall and NE/AUC over `days`."""
    from fxrec.jobs.train import train_model

    started = time.perf_counter()
    train_model(VM, config, run, log, quiet=True)
    timings["train_final_stage_s"] = time.perf_counter() - started
    stage = FinalStage.from_run(Run(run, config), VM.name)
    started = time.perf_counter()
    final = dict(stage.score_log(days))
    timings["score_candidates_s"] = time.perf_counter() - started
    features = EsrFeatures(log.spec)
    rankers: dict[str, dict] = {}
    for name in ("teacher", "esr_mt_distilled", "esr_mt", "esr_single"):
        timings[f"train_{name}_s"] = 0.0
    for day in days:
        started = time.perf_counter()
        teacher = dict(stage.score_log(as_of=day))
        timings["train_teacher_s"] += time.perf_counter() - started
        started = time.perf_counter()
        distilled = train_esr(log, day, TASKS, teacher=teacher, config=ESR, features=features)
        timings["train_esr_mt_distilled_s"] += time.perf_counter() - started
        del teacher
        started = time.perf_counter()
        plain = train_esr(log, day, TASKS, config=ESR, features=features)
        timings["train_esr_mt_s"] += time.perf_counter() - started
        started = time.perf_counter()
        single = SeparateRankers(
            {task: train_esr(log, day, [task], config=ESR, features=features) for task in TASKS}
        )
        timings["train_esr_single_s"] += time.perf_counter() - started
        rankers[day] = {"esr_mt_distilled": distilled, "esr_mt": plain, "esr_single": single}
    started = time.perf_counter()
    result = evaluate_rankers(log, rankers.__getitem__, final, days, features=features)
    # the final stage's row: its soft recall of the oracle value, and the NE/AUC of its own predictions
    result.tasks["final_stage_vs_oracle"] = prediction_metrics(Run(run, config).model(VM.name), days)
    timings["evaluate_esr_s"] = time.perf_counter() - started
    return result, rankers


def main() -> None:
    args = parse_args("funnel", __doc__.splitlines()[0])
    torch.set_num_threads(THREADS)
    simulator = SIMULATOR.model_copy(update=QUICK) if args.quick else SIMULATOR
    log = EventLog(simulated_log(simulator, "funnel-quick" if args.quick else "funnel"))
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        config = RunConfig(
            name="funnel",
            simulator=None,
            events=str(log.path),
            fm=FM,
            vms=[VM],
            train={
                "batch_size": 512,
                "threads": THREADS,
                "report_days": 1,
                "checkpoint_every": 100_000,
                "vm_snapshots": True,
            },
            publish={"delays": [0], "code_dim": 8, "store": False},
        )
        from fxrec.jobs.publish import publish
        from fxrec.jobs.train import train_model

        started = time.perf_counter()
        train_model(config.fm, config, run, log, quiet=True)
        timings["train_fm_s"] = time.perf_counter() - started
        started = time.perf_counter()
        publish_dir = publish(run, config, delay=0, progress=False)
        timings["publish_s"] = time.perf_counter() - started
        engagements = Engagements.from_log(log)
        days = log.days[-(QUICK_EVAL_DAYS if args.quick else EVAL_DAYS) :]
        interests = true_interests(simulator, log.days)
        retrievers = [
            AlureRetriever(publish_dir, search="hnsw"),
            AlureRetriever(publish_dir, search="exact"),
            AlureRetriever(interests.__getitem__, search="exact"),
            PopularityRetriever(),
            CoEngagementRetriever(),
            TwoTowerRetriever(
                log.spec.feature("user_id").cardinality, log.spec.feature("item_id").cardinality
            ),
        ]
        retrievers[1].name, retrievers[2].name = "alure_exact", "alure_oracle"
        started = time.perf_counter()
        result = evaluate_retrieval(engagements, days, retrievers)
        timings["retrieval_s"] = time.perf_counter() - started
        graph = graph_quality(publish_dir, interests, days)
        esr, rankers = early_stage(config, run, log, days, timings)
        started = time.perf_counter()
        funnel = end_to_end(
            run,
            config,
            {day: r["esr_mt_distilled"] for day, r in rankers.items()},
            VM.name,
            len(days),
            FUNNEL,
        )
        timings["funnel_end_to_end_s"] = time.perf_counter() - started
        started = time.perf_counter()
        latency = request_latency(run, VM.name, requests=100 if args.quick else 300)
        timings["funnel_latency_s"] = time.perf_counter() - started
    rows = [
        {
            "method": name,
            **{f"recall@{k}": round(v, 4) for k, v in by_k.items()},
            "list_len": round(result.own_length[name], 1),
            "seconds": round(result.seconds[name], 2),
        }
        for name, by_k in result.recall.items()
    ]
    print_table("funnel: retrieval recall@K on later days", rows)
    print_table("funnel: mean true-interest cosine of a user and their 50 neighbours", [graph])
    baselines = ("popularity", "item_to_item", "two_tower")
    ratios: dict = {
        f"alure_over_{b}@{k}": result.recall["alure"][k] / max(result.recall[b][k], 1e-9)
        for b in baselines
        for k in result.ks
    }
    ratios["alure_beats_every_baseline@200"] = all(
        result.recall["alure"][200] > result.recall[b][200] for b in baselines
    )
    ratios["hnsw_over_exact@200"] = result.recall["alure"][200] / max(result.recall["alure_exact"][200], 1e-9)
    esr_rows = [
        {
            "ranker": name,
            **{f"soft_recall@{k}": round(v, 4) for k, v in by_k.items()},
            **{
                f"{task}_{metric}": value
                for task, metrics in esr.tasks.get(name, {}).items()
                for metric, value in metrics.items()
            },
        }
        for name, by_k in esr.soft_recall.items()
    ]
    print_table(
        f"funnel: early-stage rankers, soft recall@K of the final stage's value ({esr.requests} requests, "
        f"{esr.candidates_per_request:.0f} candidates each) and NE/AUC on impressions",
        esr_rows,
    )
    recall50 = {name: esr.soft_recall[name][50] for name in ("esr_mt_distilled", "esr_mt", "esr_single")}
    ratios["esr_mt_distilled_soft_recall@50"] = recall50["esr_mt_distilled"]
    ratios["esr_mt_distilled_keeps_95pct@50"] = recall50["esr_mt_distilled"] >= 0.95
    ratios["esr_mt_distilled_beats_single@50"] = recall50["esr_mt_distilled"] > recall50["esr_single"]
    ratios["esr_mt_distilled_over_single@50"] = recall50["esr_mt_distilled"] / max(
        recall50["esr_single"], 1e-9
    )
    ratios["esr_mt_distilled_over_mt@50"] = recall50["esr_mt_distilled"] / max(recall50["esr_mt"], 1e-9)
    funnel_rows = [
        {
            "stage": name,
            "k": stage["k"],
            "ads": round(stage["mean_size"], 1),
            "recall_of_clicked": None
            if stage["recall_of_clicked"] is None
            else round(stage["recall_of_clicked"], 4),
            "value_kept": None if stage["value_kept"] is None else round(stage["value_kept"], 4),
            "p50_ms": latency["ms"].get(name, {}).get("p50"),
            "p99_ms": latency["ms"].get(name, {}).get("p99"),
        }
        for name, stage in funnel["stages"].items()
    ]
    print_table(
        f"funnel end to end ({funnel['requests']} requests; one request: p50 {latency['ms']['total']['p50']} ms, "
        f"p99 {latency['ms']['total']['p99']} ms over {latency['requests']})",
        funnel_rows,
    )
    ratios["end_to_end_value_kept"] = funnel["end_to_end_value_kept"]
    ratios["request_p50_ms"] = latency["ms"]["total"]["p50"]
    ratios["request_p99_ms"] = latency["ms"]["total"]["p99"]
    write_result(
        args,
        "funnel",
        rows,
        ratios,
        funnel_rows=funnel_rows,
        funnel={k: v for k, v in funnel.items() if k != "per_day"},
        latency=latency,
        esr_rows=esr_rows,
        esr=esr.as_dict(),
        retrieval=result.as_dict(),
        graph=graph,
        timings=timings,
        simulator=simulator.model_dump(),
    )


if __name__ == "__main__":
    main()
