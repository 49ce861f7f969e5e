"""Serving latency: the VM alone vs + SOAP async FM refresh vs + the FM inline, side by side.

Builds (once) a run whose FM has a SUM user tower and target attention and whose VM reads both
(channels sum + tae), then `fxrec.jobs.loadtest.compare_modes`: three servers, the same replayed
requests in interleaved turns, open-loop load on loopback (load = the offered request rate, up to 16
requests in flight). The goal: p99 of (b) <= 1.2x p99 of (a); (c) shows what putting the FM on the
request path would cost.

Each load level (`--rate` and twice it) runs its three configurations for ROUNDS interleaved rounds
of REQUESTS_PER_ROUND requests each (fresh servers per level); every round reports its own p50 / p99,
and each ratio (b)/(a), (c)/(a) is taken per round and reported as the median over rounds with its
min and max, so a p99 set by one machine stall shows as spread rather than as a win or a loss.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import ROOT, parse_args, print_table, write_result

sys.path.insert(0, str(ROOT))

NAME = "serving"
ROUNDS, REQUESTS_PER_ROUND = 5, 5000
QUICK_ROUNDS, QUICK_REQUESTS_PER_ROUND = 3, 200
LOADS = (1, 2)  # multiples of --rate
FM = {
    "name": "fm",
    "role": "fm",
    "embedding_dim": 32,
    "min_count": 10,
    "dense_layers": [64],
    "interaction": {"name": "dcnv2", "num_layers": 3, "low_rank": 64},
    "heads": {"kind": "shared_bottom", "hidden": [256, 128]},
    "user_tower": {
        "features": [
            "user_id",
            "country",
            "age_bucket",
            "device",
            "user_segments",
            "user_past_impressions",
            "hist_item_id",
            "hist_advertiser_id",
        ],
        "dim": 32,
        "hidden": [128],
    },
    "target_attention": {"query": ["item_id"], "heads": 2},
}
VM = {
    "name": "vm_feed",
    "role": "vm",
    "surfaces": ["feed"],
    "embedding_dim": 16,
    "min_count": 1,
    "dense_layers": [32],
    "interaction": {"name": "dcnv2", "num_layers": 2, "low_rank": 16},
    "heads": {"kind": "shared_bottom", "hidden": [64, 32]},
    "channels": ["sum", "tae"],
}


def prepare_run(run: Path, quick: bool) -> Path:
    """The bench's run: a demo-like world (smaller with --quick), FM trained and published, VM trained."""
    from fxrec.config import RunConfig
    from fxrec.jobs.publish import publish
    from fxrec.jobs.train import prepare_events, train_model

    world = (
        {"days": 4, "impressions_per_day": 12_000, "users": 3000, "ads": 600}
        if quick
        else {"days": 7, "impressions_per_day": 40_000, "users": 8000}
    )
    config = RunConfig.model_validate(
        {
            "name": run.name,
            "simulator": world,
            "fm": FM,
            "vms": [VM],
            "train": {"batch_size": 512, "dense_lr": 0.001, "embedding_lr": 0.1, "threads": 2},
            "publish": {"delays": [0], "code_dim": 16},
        }
    )
    run.mkdir(parents=True, exist_ok=True)
    log = prepare_events(config, run)  # records config.yaml too
    train_model(config.fm, config, run, log)
    publish(run, config, delay=0)
    train_model(config.vms[0], config, run, log)
    return run


def main() -> None:
    args = parse_args(
        NAME,
        __doc__.splitlines()[0],
        [
            (
                ("--run",),
                {"type": Path, "default": None, "help": "serve this run instead of building the bench run"},
            ),
            (("--vm",), {"default": "vm_feed"}),
            (("--rate",), {"type": float, "default": 50.0, "help": "offered requests per second"}),
            (("--candidates",), {"type": int, "default": 100}),
        ],
    )
    from fxrec.jobs.loadtest import LoadSettings, compare_modes

    run = args.run or prepare_run(
        ROOT / "runs" / ("serving_bench_quick" if args.quick else "serving_bench"), args.quick
    )
    rounds, per_round = (
        (QUICK_ROUNDS, QUICK_REQUESTS_PER_ROUND) if args.quick else (ROUNDS, REQUESTS_PER_ROUND)
    )
    rows, ratios, settings = [], {}, {}
    for load in LOADS:
        rate = load * args.rate
        level = f"{load}x ({rate:g} req/s)"
        load_settings = LoadSettings(
            requests=rounds * per_round,
            seconds=2.0 * rounds * per_round / rate,  # a bound that only a server far behind reaches
            rate=rate,
            concurrency=16,
            candidates=args.candidates,
            warmup=100,
            rounds=rounds,
        )
        results = compare_modes(run, args.vm, ["vm", "async", "inline"], load_settings)
        settings[level] = results["settings"]
        rows += [{"load": level, **row} for row in results["rows"]]
        ratios |= {f"{level} {name}": value for name, value in results["ratios"].items()}
        report(level, results, args.vm, args.candidates)
    solaris = solaris_section(run, args.vm)
    write_result(
        args,
        NAME,
        rows,
        ratios,
        settings=settings,
        run=str(run),
        vm=args.vm,
        solaris=solaris,
    )


def report(level: str, results: dict, vm: str, candidates: int) -> None:
    """One load level's table: every configuration over all its requests, then per round, then the ratios."""
    columns = [
        "configuration",
        "requests",
        "qps",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "errors",
        "server_errors",
    ]
    print_table(
        f"serving: {vm}, {candidates} candidates/request, {level} offered, all rounds",
        results["rows"],
        columns,
    )
    per_round = [
        {"configuration": row["configuration"], "round": i + 1, **part}
        for row in results["rows"]
        for i, part in enumerate(row["rounds"])
    ]
    round_columns = [
        "configuration",
        "round",
        "requests",
        "qps",
        "p50_ms",
        "p99_ms",
        "server_p50_ms",
        "server_p99_ms",
    ]
    print_table(f"serving: {level}, per round", per_round, round_columns)
    for row in results["rows"]:
        print(f"{row['configuration']}: sources {row['sources']}")
        background = {
            k.split("{")[1].rstrip("}"): v
            for k, v in row["background"].items()
            if k.startswith(("fxrec_refresh_total", "fxrec_pair_precompute_total"))
        }
        if background:
            print(f"   background: {background}")
    for name, value in results["ratios"].items():
        rounds = ", ".join(f"{x:.2f}" for x in value["per_round"])
        print(
            f"{level} {name}: median {value['median']:.2f}x (min {value['min']:.2f}, max {value['max']:.2f}; rounds {rounds})"
        )
    goal = results["ratios"].get("p99 async/vm")
    if goal is not None:
        met = sum(x <= 1.2 for x in goal["per_round"])
        print(
            f"{level} goal p99(b) <= 1.2 x p99(a): {'met' if goal['median'] <= 1.2 else 'NOT met'} on the median "
            f"({goal['median']:.2f}x), in {met} of {len(goal['per_round'])} rounds"
        )


def solaris_section(run: Path, vm: str) -> dict | None:
    """SOLARIS offline on the run's log: coverage per fallback tier and the VM's NE per scenario."""
    from fxrec.jobs.replay import solaris_report

    try:
        report = solaris_report(run, vm)
    except ValueError as error:  # a VM without the tae channel
        print(f"SOLARIS coverage skipped: {error}")
        return None
    tiers = [
        {
            "tier": name,
            "share": report["tier_share"][name],
            "cumulative coverage": report["cumulative_coverage"].get(name),
        }
        for name in report["tier_share"]
    ]
    print_table(f"SOLARIS offline replay: {report['events']:,} requests on {report['days']}", tiers)
    rows = [
        {"scenario": name, "NE": value, "NE change % vs no TAE": report["ne_change_pct_vs_none"][name]}
        for name, value in report["ne"].items()
    ]
    print_table("VM NE with each coverage level", rows)
    return report


if __name__ == "__main__":
    main()
