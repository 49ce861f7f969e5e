"""Reach estimation: fxrec's stratified sample vs a uniform sample, simple (proportional) stratification
and theta sketches at equal bytes, on a simulated population, side by side in one run.

The population (10^7 users; --quick: 10^5) is generated in chunks (fxrec.audience.population) and
read twice: pass 1 counts the strata, fxrec's census of margins, feeds the theta sketches and counts
every query exactly; pass 2 draws the three samples (bottom-k per stratum). Only the samples, the
census and the sketches stay in memory. The strata are learned on a past log (users of the same world
outside the population) and a past query workload; the measured queries are fresh random advertiser
queries (>= 1,000 with a non-zero reach). `--seed` sets the population's seed: tune on another seed
than the reported run's (the default).

fxrec's census of margins (fxrec.audience.margins; `--census`, default `both`): users per value of
each categorical field, each age and each interest segment, per cell of each stratum dimension, of
the age bands and of every country, and overall. `weights`: the sample's weights are raked to the
one-way margins and N_h at build time (fxrec.audience.calibration; a float32 weight stored per row);
`rates`: the fall-back's synthetic rate of a leaf is raked to the census along every dimension, and
a thin `and` of such leaves lifted to each pair's count given the age band or country; `both`;
`off`: neither (the estimator before the census). Equal bytes: the census kept (4 bytes a cell; `rates` and `both`) and the stored
weights (4 bytes a row) come out of fxrec's rows; `methods.fxrec` in the JSON reports the split
(`census_bytes`, `rows`).

Reported per method and true-reach bucket (<= 10^3, 10^3-10^5, >= 10^5 users): the median (and p90)
relative error of unique users (and of impressions, for the samples), the share of queries whose 95%
interval covers the truth (the fall-back's interval includes its bias term: fxrec.audience.reach),
and in-process query latency p50 / p99. Queries on one kept margin (e.g. `interest:pets`) are
reproduced exactly by the calibrated weights, so fxrec's median at >= 10^5 is near zero: read its p90
too. Goals (issue 28, full run): median
error <= 5% at >= 10^5 and <= 25% at <= 10^3, every bucket better than uniform and proportional;
p99 <= 50 ms. `--population DIR` writes the population there as Parquet once and reads it back.

Then the same queries on Ray (fxrec.audience.shards; `--no-ray` skips it): fxrec's first sample split
into 4 shards x 2 replicas on a local Ray of 2 CPUs. Reported: query p50 / p99 next to in-process on
the same sample, the largest difference from the in-process answers (the same estimator over summed
statistics: float rounding only), and a fault run: the queries stream while one replica is killed
(`ray.kill`) once the stream is under way; the failed queries (goal: 0), the seconds until the shard
has its 2 replicas again, and the median relative error of the queries answered in between.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
from _common import parse_args, print_table, write_result

from fxrec.audience.build import population_sigma
from fxrec.audience.evaluate import reach
from fxrec.audience.margins import MarginCounter
from fxrec.audience.population import (
    PopulationConfig,
    audience_schema,
    iter_chunks,
    past_users,
    read_population,
    write_population,
)
from fxrec.audience.reach import ReachIndex
from fxrec.audience.sample import BottomK, CensusCounter
from fxrec.audience.schema import Columns
from fxrec.audience.sketches import ThetaIndex, lg_k_for_budget
from fxrec.audience.strata import Stratification, Workload, learn_stratification, neyman, proportional
from fxrec.audience.workload import random_queries

NAME = "reach"
FULL = {"users": 10_000_000, "chunk_size": 100_000, "pilot": 100_000, "sample_rate": 0.01, "queries": 1200}
QUICK = {"users": 100_000, "chunk_size": 25_000, "pilot": 20_000, "sample_rate": 0.02, "queries": 1200}
# MIN_SUPPORT 50: on 10^6 users, better than 8, 20 and 100; re-checked with the census of margins on
# another population seed (23): 20 / 50 / 100 gave 0.211 / 0.206 / 0.200 at <= 10^3 and 0.0078 /
# 0.0062 / 0.0059 at 10^3-10^5 (users), 100 worse on impressions at <= 10^3: within noise, kept
PAST_QUERIES, MINIMUM, MIN_SUPPORT = 200, 5, 50
# Neyman allocation blended with proportional: on 10^6 users (1% sample), before the census of margins
# 0.8 beat 0.5 and 0 (pure Neyman) on the 10^3-10^5 and >= 10^5 buckets; with it (population seed 23)
# 0.5 / 0.8 / 1.0 gave 0.201 / 0.206 / 0.205 at <= 10^3 and 0.0053 / 0.0062 / 0.0073 at 10^3-10^5
# (users), 0.5 best on impressions too
MIX = 0.5
REPLICATES = 3  # samples per method (seeds): errors pool over them, so one lucky draw does not decide
BUCKETS = (("<=1e3", 0, 1e3), ("1e3-1e5", 1e3, 1e5), (">=1e5", 1e5, np.inf))


def keep_interest(columns: Columns) -> Columns:
    """What the samples keep: the targetable truth (providers' labels are for the quality tools)."""
    segments = {"interest": columns.segments["interest"]}
    return Columns(columns.user_id, columns.categorical, columns.numeric, segments, columns.impressions)


def main() -> None:
    args = parse_args(
        NAME,
        __doc__.splitlines()[0],
        [
            (
                ("--population",),
                {"type": Path, "default": None, "help": "write/read the population as Parquet here"},
            ),
            (
                ("--users",),
                {"type": int, "default": None, "help": "population size (default: 10^7; --quick: 10^5)"},
            ),
            (
                ("--min-support",),
                {"type": int, "default": MIN_SUPPORT, "help": "fxrec's fall-back threshold (sampled users)"},
            ),
            (
                ("--sample-rate",),
                {"type": float, "default": None, "help": "sample rows per user (default 0.01; --quick 0.02)"},
            ),
            (("--no-ray",), {"action": "store_true", "help": "skip the Ray shards' latency and fault run"}),
            (
                ("--mix",),
                {"type": float, "default": MIX, "help": "fxrec's Neyman / proportional blend (0: Neyman)"},
            ),
            (
                ("--census",),
                {
                    "choices": ["off", "rates", "weights", "both"],
                    "default": "both",
                    "help": "fxrec's census of margins: for the fall-back's rates, calibrated weights, both",
                },
            ),
            (
                ("--seed",),
                {"type": int, "default": None, "help": "population seed (tuning runs: not the default's)"},
            ),
        ],
    )
    setup = dict(QUICK if args.quick else FULL)
    if args.users:
        setup["users"] = args.users
    if args.sample_rate:
        setup["sample_rate"] = args.sample_rate
    config = PopulationConfig(users=setup["users"], chunk_size=setup["chunk_size"])
    if args.seed is not None:
        config = config.model_copy(update={"seed": args.seed})
    schema = audience_schema(config)
    if args.population is not None:
        if not (args.population / "schema.yaml").exists():
            write_population(config, args.population)

        def chunks():
            return read_population(args.population)[1]
    else:

        def chunks():
            return iter_chunks(config)

    budget = int(setup["sample_rate"] * config.users)
    started = time.perf_counter()
    pilot = past_users(config, setup["pilot"])
    past = random_queries(schema, PAST_QUERIES, seed=1)
    strata = learn_stratification(schema, pilot, past, config.users, budget, MINIMUM)
    learned_s = time.perf_counter() - started
    print(f"strata: {strata.describe()} (learned in {learned_s:.1f}s)")
    queries = random_queries(schema, setup["queries"], seed=7)

    # pass 1: strata counts, theta sketches, exact answers
    row_bytes = keep_interest(pilot).take(np.arange(1)).nbytes() + 4
    pilot_counts = _sketch_sizes(schema, pilot, config.users / len(pilot))
    lg_k = lg_k_for_budget(pilot_counts, int(0.9 * budget * row_bytes))  # 0.9: pilot-estimated set sizes
    theta = ThetaIndex(schema, lg_k)
    counter, uniform_counter = CensusCounter(strata), CensusCounter(Stratification())
    margin_counter = MarginCounter(schema, strata, ("interest",)) if args.census != "off" else None
    truth = np.zeros((len(queries), 2))
    pass_started = time.perf_counter()
    for chunk in chunks():
        counter.add(chunk)
        uniform_counter.add(chunk)
        if margin_counter is not None:
            margin_counter.add(chunk)
        theta.add(chunk)
        cache: dict = {}  # leaf masks shared by the queries on this chunk
        for i, query in enumerate(queries):
            reached, impressions = reach(query, chunk, cache)
            truth[i] += (reached.sum(), impressions.sum())
    theta.finish()
    pass1_s = time.perf_counter() - pass_started
    counts, uniform_counts = counter.result(), uniform_counter.result()
    margins = margin_counter.result() if margin_counter is not None else None

    # equal bytes: fxrec's census of margins and its stored calibrated weights come out of its rows
    calibrate = args.census in ("weights", "both")
    kept = margins is not None and args.census in ("rates", "both")  # "weights": used once, not kept
    census_bytes = margins.nbytes() if kept else 0
    fxrec_budget = int((budget * row_bytes - census_bytes) // (row_bytes + (4 if calibrate else 0)))

    # pass 2: the samples
    sigma = population_sigma(strata, counts, pilot, Workload.evaluate(past, pilot))
    allocations = {
        "fxrec": (strata, counts, neyman(counts.users, sigma, fxrec_budget, MINIMUM, args.mix)),
        "uniform": (Stratification(), uniform_counts, np.array([budget])),
        "proportional": (strata, counts, proportional(counts.users, budget)),
    }
    samplers = {
        (name, r): BottomK(
            *allocation, seed=100 * r + i, keep=keep_interest, margins=margins if name == "fxrec" else None
        )
        for i, (name, allocation) in enumerate(allocations.items())
        for r in range(REPLICATES)
    }
    pass_started = time.perf_counter()
    for chunk in chunks():
        for sampler in samplers.values():
            sampler.add(chunk)
    pass2_s = time.perf_counter() - pass_started
    options = {
        "fxrec": {"min_support": args.min_support},
        "uniform": {"min_support": 0, "exact_strata": False},
    }
    options["proportional"] = options["uniform"]

    answers: dict[str, np.ndarray] = {}
    latency: dict[str, np.ndarray] = {}
    extra: dict[str, dict] = {}
    first: ReachIndex | None = None  # fxrec's first sample: the one the Ray shards hold
    calibrate_s: list[float] = []
    for name in allocations:
        rows, times = [], []
        for r in range(REPLICATES):
            sample = samplers[(name, r)].result()
            if name == "fxrec" and calibrate:
                t0 = time.perf_counter()
                sample = sample.calibrate()
                calibrate_s.append(time.perf_counter() - t0)
            if name == "fxrec" and args.census == "weights":
                sample.margins = None  # calibrated weights only: the fall-back keeps the sample's rates
            index = ReachIndex(schema, sample, **options[name])
            first = index if (name, r) == ("fxrec", 0) else first
            for query in queries:
                t0 = time.perf_counter()
                e = index.query(query)
                times.append(time.perf_counter() - t0)
                rows.append((e.users, e.impressions, e.users_low, e.users_high, e.fallback))
        answers[name], latency[name] = np.array(rows, dtype=float), np.array(times)
        extra[name] = {"bytes": index.nbytes(), "rows": len(index.sample.rows)}
        if name == "fxrec":
            extra[name].update(
                census=args.census,
                census_bytes=census_bytes,
                calibrated=calibrate,
                calibrate_s=max(calibrate_s, default=0.0),
            )
    times, rows = [], []
    for query in queries:
        t0 = time.perf_counter()
        rows.append((theta.query(query), np.nan, np.nan, np.nan, 0.0))
        times.append(time.perf_counter() - t0)
    answers["theta"], latency["theta"] = (
        np.array(rows * REPLICATES),
        np.array(times),
    )  # one sketch set, repeated
    extra["theta"] = {"bytes": theta.nbytes(), "lg_k": lg_k, "sketches": len(theta.sketches)}

    result_rows, medians = [], {}
    truth = np.tile(truth, (REPLICATES, 1))  # answers: replicate after replicate of every query
    nonzero = truth[:, 0] > 0
    for name, answer in answers.items():
        users_error = np.abs(answer[:, 0] - truth[:, 0]) / np.maximum(truth[:, 0], 1)
        impressions_error = np.abs(answer[:, 1] - truth[:, 1]) / np.maximum(truth[:, 1], 1)
        covered = (answer[:, 2] <= truth[:, 0]) & (truth[:, 0] <= answer[:, 3])
        for bucket, low, high in BUCKETS:
            inside = (
                nonzero
                & (truth[:, 0] > low if low else True)
                & (truth[:, 0] <= high if np.isfinite(high) else True)
            )
            if bucket == ">=1e5":
                inside = nonzero & (truth[:, 0] >= low)
            if not inside.any():
                continue
            medians[(name, bucket)] = float(np.median(users_error[inside]))
            result_rows.append(
                {
                    "method": name,
                    "bucket": bucket,
                    "queries": int(inside.sum()) // REPLICATES,
                    "users_median_rel_err": medians[(name, bucket)],
                    "users_p90_rel_err": float(np.quantile(users_error[inside], 0.9)),
                    "impressions_median_rel_err": None
                    if name == "theta"
                    else float(np.median(impressions_error[inside])),
                    "ci_coverage": None if name == "theta" else float(covered[inside].mean()),
                    "fallback_share": float(answer[inside, 4].mean()),
                    "p50_ms": float(np.median(latency[name]) * 1e3),
                    "p99_ms": float(np.quantile(latency[name], 0.99) * 1e3),
                    "bytes": extra[name]["bytes"],
                }
            )
    print_table(
        f"reach: {config.users:,} users, {int(nonzero.sum())} queries with reach > 0, budget {budget:,} rows",
        result_rows,
    )
    ratios = {}
    for bucket, _, _ in BUCKETS:
        for other in ("uniform", "proportional", "theta"):
            if ("fxrec", bucket) in medians and (other, bucket) in medians and medians[(other, bucket)] > 0:
                ratios[f"fxrec/{other} median users error {bucket}"] = (
                    medians[("fxrec", bucket)] / medians[(other, bucket)]
                )
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    ray_shards = None
    if not args.no_ray and first is not None and importlib.util.find_spec("ray") is None:
        print("Ray shards: skipped (Ray is not installed: pip install 'fxrec[ray]')")
    elif not args.no_ray and first is not None:
        ray_shards = _ray_shards(first, queries, truth[: len(queries), 0])
        print(
            f"Ray: {SHARDS} shards x {REPLICAS} replicas on a local Ray of {RAY_CPUS} CPUs, started in "
            f"{ray_shards['start_s']:.1f}s; fxrec's first sample, {len(queries)} queries"
        )
        print_table(
            "query latency",
            [
                {
                    "path": "in process",
                    "p50_ms": ray_shards["in_process_p50_ms"],
                    "p99_ms": ray_shards["in_process_p99_ms"],
                },
                {
                    "path": "Ray shards",
                    "p50_ms": ray_shards["ray_p50_ms"],
                    "p99_ms": ray_shards["ray_p99_ms"],
                },
            ],
        )
        print(
            f"largest relative difference Ray vs in-process: {ray_shards['max_rel_diff_vs_in_process']:.2e}"
        )
        print_table("one replica killed mid-stream", [ray_shards["fault"]])
    write_result(
        args,
        NAME,
        result_rows,
        ratios,
        setup=setup,
        strata=strata.describe(),
        strata_count=len(counts.keys),
        methods=extra,
        queries_zero_reach=int((~nonzero).sum()) // REPLICATES,
        ray_shards=ray_shards,
        seconds={
            "learn": learned_s,
            "pass1": pass1_s,
            "pass2": pass2_s,
            "total": time.perf_counter() - started,
        },
    )


SHARDS, REPLICAS, RAY_CPUS = 4, 2, 2
KILL_AFTER = 50  # queries answered before the fault run kills a replica


def _ray_shards(local: ReachIndex, queries: list, truth: np.ndarray) -> dict:
    """Latency on S x R Ray shards next to in-process (same sample, same queries), the largest relative
    difference between the two answers, and the fault run (see the module docstring)."""
    import threading

    import ray

    from fxrec.audience.reach import ReachEstimator
    from fxrec.audience.shards import ShardedReachIndex

    started = time.perf_counter()
    estimator = ReachEstimator.of(local.schema, local.sample, min_support=local.min_support)
    sharded = ShardedReachIndex(estimator, local.rows.split(SHARDS), REPLICAS, num_cpus=RAY_CPUS)
    start_s = time.perf_counter() - started
    try:
        for query in queries[:20]:  # warm both paths (the estimator's decisions, Ray's connections)
            sharded.query(query), local.query(query)
        in_process, on_ray, difference = [], [], 0.0
        for query in queries:
            t0 = time.perf_counter()
            a = local.query(query)
            t1 = time.perf_counter()
            b = sharded.query(query)
            on_ray.append(time.perf_counter() - t1)
            in_process.append(t1 - t0)
            for x, y in ((a.users, b.users), (a.impressions, b.impressions)):
                difference = max(difference, abs(x - y) / max(abs(x), 1e-9))
        # the fault run: stream the queries, kill one replica once KILL_AFTER have been answered
        victim = sharded.replicas(0)[0]
        answered = threading.Event()
        state = {"count": 0, "killed_at": None}

        def kill() -> None:
            answered.wait()
            state["killed_at"] = time.perf_counter()
            ray.kill(victim)

        killer = threading.Thread(target=kill)
        killer.start()
        failed, during, errors, replaced_s = 0, [], [], None
        deadline = time.perf_counter() + 120
        i = 0
        while i < len(queries) or (replaced_s is None and time.perf_counter() < deadline):
            q = i % len(queries)
            i += 1
            try:
                estimate = sharded.query(queries[q])
            except Exception:  # noqa: BLE001 - counted: the goal is none
                failed += 1
                continue
            state["count"] += 1
            if truth[q] > 0:
                errors.append(abs(estimate.users - truth[q]) / truth[q])
            if state["count"] >= KILL_AFTER:
                answered.set()
            if state["killed_at"] is not None and replaced_s is None:
                if sharded.replaced >= 1 and min(sharded.live()) >= REPLICAS:
                    replaced_s = time.perf_counter() - state["killed_at"]
                elif truth[q] > 0:
                    during.append(abs(estimate.users - truth[q]) / truth[q])
        answered.set()  # a stream too short to reach KILL_AFTER still ends the killer
        killer.join()
        fault = {
            "queries": i,
            "failed": failed,
            "retried": sharded.retried,
            "replaced_s": replaced_s,
            "answered_during_replacement": len(during),
            "median_rel_err_during": float(np.median(during)) if during else None,
            "median_rel_err_stream": float(np.median(errors)) if errors else None,
        }
    finally:
        sharded.close()
    return {
        "shards": SHARDS,
        "replicas": REPLICAS,
        "start_s": start_s,
        "ray_p50_ms": float(np.median(on_ray) * 1e3),
        "ray_p99_ms": float(np.quantile(on_ray, 0.99) * 1e3),
        "in_process_p50_ms": float(np.median(in_process) * 1e3),
        "in_process_p99_ms": float(np.quantile(in_process, 0.99) * 1e3),
        "max_rel_diff_vs_in_process": difference,
        "fault": fault,
    }


def _sketch_sizes(schema, pilot: Columns, scale: float) -> list[float]:
    """Expected set size of every theta sketch, from the pilot (to size lg_k for the byte budget)."""
    from fxrec.audience.schema import has_bit

    sizes = [len(pilot) * scale]
    for field, values in schema.categorical.items():
        sizes += (np.bincount(pilot.categorical[field], minlength=len(values)) * scale).tolist()
    for field, (low, high) in schema.numeric.items():
        sizes += (np.bincount(pilot.numeric[field] - low, minlength=high - low + 1) * scale).tolist()
    sizes += [
        has_bit(pilot.segments["interest"], k).sum() * scale for k in range(len(schema.segments["interest"]))
    ]
    sizes += ((pilot.impressions > 0).sum(0) * scale).tolist()
    return sizes


if __name__ == "__main__":
    main()
