"""Data-provider quality from aggregate truth: estimated vs true precision of 5 providers x 20 segments.

A simulated population (fxrec.audience.population; 2x10^6 users, --quick: 2x10^5) is generated in
chunks and read once; seeded campaigns run over it (fxrec.audience.campaigns; REPLICATES independent
sets of CAMPAIGNS each, measured in the same pass), each reporting the agency's impression-weighted
true share of the 20 measured segments and every provider's label share. Per provider and segment
fxrec.audience.quality estimates precision and false-positive rate from those aggregates alone:

- fxrec's two estimators of (1) E[q_c] = r p_c + f (1 - p_c): constrained least squares and the
  impression-weighted binomial MLE, precision derived with the provider's population label share
  (and the least squares weighted by impressions, to show what the weighting alone buys);
- the paper's backward regression (p_c = a q_c + b (1 - q_c), a read as the precision);
- the naive baseline, no model: precision = sum n p / sum n q (the aggregate over the label share).

Reported per method, mean over the replicates: the mean absolute error of precision against the
simulator's true precision (the rate the labels were drawn with; also against the precision realised
in this population), of the false-positive rate, the provider ranking's Spearman correlation (providers
ranked by mean precision over the segments) and the mean per-segment ranking Spearman; for the MLE,
the share of 95% jackknife intervals covering the truth; the 5-fold cross-validated error of the
held-out campaigns' aggregates. A sweep over the number of campaigns (first replicate) shows how the
error falls with more campaigns. Goals (issue 28): MAE <= 0.05 with >= 200 campaigns, Spearman >= 0.9.

Qualified reach (the population's first 10^6 users, a ReachIndex on a 1% sample of them; --quick:
2x10^5 and 2%):
for attribute-only targets x providers x the first QUALIFIED_SEGMENTS segments, the expected true
members among the provider-labelled audience (fxrec.audience.quality.qualified_reach with the MLE
rates) against the exact count of true members in it, from exact counts (the model's error alone)
and through the ReachIndex; beside the labelled reach undiscounted and discounted by the provider's
population-wide precision (labelled reach exact, and through the ReachIndex). Median and p90
relative error over the audiences with at least QUALIFIED_MEMBERS true members, and the median over
those with at least QUALIFIED_LARGE.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from functools import cache, partial

import numpy as np
from _common import parse_args, print_table, write_result
from scipy.stats import spearmanr

from fxrec.audience.build import build_reach_index
from fxrec.audience.campaigns import CampaignAggregates, CampaignConfig, campaign_queries, measure_campaigns
from fxrec.audience.evaluate import mask
from fxrec.audience.population import (
    PopulationConfig,
    audience_schema,
    generate_chunk,
    iter_chunks,
    past_users,
    provider_truth,
)
from fxrec.audience.quality import fit_least_squares, qualified_reach
from fxrec.audience.quality_report import METHODS as QUALITY_METHODS
from fxrec.audience.quality_report import assess, estimates, rates_of
from fxrec.audience.query import parse
from fxrec.audience.schema import Columns, has_bit
from fxrec.audience.workload import random_queries

NAME = "data_quality"
FULL = {"users": 2_000_000, "chunk_size": 100_000, "campaigns": 300, "replicates": 3}
QUICK = {"users": 200_000, "chunk_size": 100_000, "campaigns": 200, "replicates": 1}
# qualified reach: users (the population's first), the reach index's sample rate
FULL_QUALIFIED, QUICK_QUALIFIED = (1_000_000, 0.01), (200_000, 0.02)
SEGMENTS, FOLDS = 20, 5
FITS = {**QUALITY_METHODS, "least_squares_weighted": partial(fit_least_squares, weighted=True)}
METHODS = ("mle", "least_squares", "least_squares_weighted", "backward", "naive")
SWEEP = (50, 100, 200, 300)
GOAL_MAE, GOAL_SPEARMAN = 0.05, 0.9
QUALIFIED_TARGETS, QUALIFIED_SEGMENTS, QUALIFIED_MEMBERS = 30, 5, 50  # audiences with >= 50 true members
QUALIFIED_LARGE = 1000  # ... and the larger ones (>= 1,000 true members), where the reach error is small


class Realised:
    """Counts the precision realised in the population while the campaigns read its chunks."""

    def __init__(self, providers: list[str]):
        self.providers = providers
        self.labelled = np.zeros((len(providers), SEGMENTS))
        self.correct = np.zeros((len(providers), SEGMENTS))

    def tally(self, chunks: Iterator[Columns]) -> Iterator[Columns]:
        for chunk in chunks:
            truth = np.stack([has_bit(chunk.segments["interest"], k) for k in range(SEGMENTS)], axis=1)
            for j, provider in enumerate(self.providers):
                label = np.stack([has_bit(chunk.segments[provider], k) for k in range(SEGMENTS)], axis=1)
                self.labelled[j] += label.sum(0)
                self.correct[j] += (label & truth).sum(0)
            yield chunk

    def precision(self) -> np.ndarray:
        return self.correct / np.maximum(self.labelled, 1)


def split(aggregates: CampaignAggregates, rows: np.ndarray) -> CampaignAggregates:
    """The campaigns `rows` of a measured set (the population's label shares are shared)."""
    return CampaignAggregates(
        segments=aggregates.segments,
        providers=aggregates.providers,
        queries=[aggregates.queries[i] for i in rows],
        users=aggregates.users[rows],
        impressions=aggregates.impressions[rows],
        agency=aggregates.agency[rows],
        labels=aggregates.labels[:, rows],
        targeted=aggregates.targeted[:, rows],
        population_users=aggregates.population_users,
        population_labels=aggregates.population_labels,
    )


def _mean_spearman(found: np.ndarray, truth: np.ndarray) -> float:
    """Per segment, how well the providers are ranked; a constant estimate (all clipped to 1) is 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on a constant input and returns NaN
        values = [spearmanr(found[:, k], truth[:, k]).statistic for k in range(found.shape[1])]
    return float(np.mean(np.nan_to_num(values)))


def score(report: dict, true_precision: np.ndarray, true_fpr: np.ndarray, realised: np.ndarray) -> dict:
    """Per method: precision / FPR errors, ranking Spearman, interval coverage, CV error."""
    providers = list(report["providers"])
    out = {}
    for method in METHODS:
        found = np.stack([estimates(report, method)[p] for p in providers])  # [providers, segments]
        row = {
            "mae_precision": float(np.nanmean(np.abs(found - true_precision))),
            "mae_precision_realised": float(np.nanmean(np.abs(found - realised))),
            "max_error_precision": float(np.nanmax(np.abs(found - true_precision))),
            "spearman_providers": float(spearmanr(np.nanmean(found, 1), true_precision.mean(1)).statistic),
            "spearman_segments": _mean_spearman(found, true_precision),
        }
        if method != "backward":
            key = "false_positive_rate"
            fpr = np.array(
                [
                    [report["providers"][p]["segments"][s][method][key] for s in report["segments"]]
                    for p in providers
                ]
            )
            row["mae_fpr"] = float(np.mean(np.abs(fpr - true_fpr)))
        if method in FITS:
            fitted = [
                [report["providers"][p]["segments"][s][method] for s in report["segments"]] for p in providers
            ]
            low = np.array([[f["precision_ci"][0] for f in r] for r in fitted])
            high = np.array([[f["precision_ci"][1] for f in r] for r in fitted])
            row["ci95_coverage"] = float(((low <= true_precision) & (true_precision <= high)).mean())
            row["cv_error"] = float(np.mean([[f["cv_error"] for f in r] for r in fitted]))
        out[method] = row
    return out


def qualified_check(config: PopulationConfig, report: dict, users: int, rate: float) -> list[dict]:
    """Qualified reach against the exact number of true members in provider-labelled audiences."""
    schema = audience_schema(config)
    chunks = [generate_chunk(config, i) for i in range(-(-min(users, config.users) // config.chunk_size))]
    users = sum(len(c) for c in chunks)
    index = build_reach_index(
        schema,
        lambda: chunks,
        past_users(config, 20_000),
        random_queries(schema, 200, seed=1),
        budget=int(rate * users),
        population=users,
    )
    targets = campaign_queries(schema, CampaignConfig(seed=11, campaigns=QUALIFIED_TARGETS, targeted=0.0))

    @cache
    def exact(expr: str) -> float:
        node = parse(expr, schema).users(len(schema.surfaces))
        return float(sum(mask(node, chunk).sum() for chunk in chunks))

    names = ("exact counts", "reach index", "global precision", "reach index, global precision", "none")
    errors: dict[str, list[float]] = {name: [] for name in names}
    sizes: list[float] = []
    for target in targets:
        for provider in report["providers"]:
            for segment in report["segments"][:QUALIFIED_SEGMENTS]:
                rates = rates_of(report, provider, segment)
                members = exact(f"({target}) and {provider}:{segment} and interest:{segment}")
                if members < QUALIFIED_MEMBERS:
                    continue
                labelled = exact(f"({target}) and {provider}:{segment}")
                precision = report["providers"][provider]["segments"][segment]["mle"]["precision"]
                found = {
                    "exact counts": qualified_reach(exact, rates, provider, segment, target).qualified,
                    "reach index": qualified_reach(index, rates, provider, segment, target).qualified,
                    "global precision": labelled * precision,
                    "reach index, global precision": index.query(f"({target}) and {provider}:{segment}").users
                    * precision,
                    "none": labelled,
                }
                for name, value in found.items():
                    errors[name].append(abs(value - members) / members)
                sizes.append(members)
    large = np.array(sizes) >= QUALIFIED_LARGE
    return [
        {
            "qualified reach": name,
            "audiences": len(values),
            "median_rel_error": float(np.median(values)),
            "p90_rel_error": float(np.quantile(values, 0.9)),
            "large_audiences": int(large.sum()),
            "median_rel_error_large": float(np.median(np.array(values)[large])) if large.any() else None,
        }
        for name, values in errors.items()
    ]


def main() -> None:
    args = parse_args(
        NAME,
        __doc__.splitlines()[0],
        [
            (
                ("--users",),
                {"type": int, "default": None, "help": "population size (default 2x10^6; quick 2x10^5)"},
            ),
            (("--campaigns",), {"type": int, "default": None, "help": "campaigns per replicate (>= 200)"}),
        ],
    )
    setup = dict(QUICK if args.quick else FULL)
    for key in ("users", "campaigns"):
        if getattr(args, key):
            setup[key] = getattr(args, key)
    config = PopulationConfig(users=setup["users"], chunk_size=setup["chunk_size"])
    schema = audience_schema(config)
    truth = provider_truth(config)
    providers = list(truth["providers"])
    true_precision = np.array([truth["providers"][p]["precision"][:SEGMENTS] for p in providers])
    true_fpr = np.array([truth["providers"][p]["false_positive_rate"][:SEGMENTS] for p in providers])

    # one pass: every replicate's campaigns at once (distinct seeds per campaign), then split
    replicates, per = setup["replicates"], setup["campaigns"]
    started = time.perf_counter()
    realised = Realised(providers)
    campaign_config = CampaignConfig(seed=7, campaigns=replicates * per, segments=SEGMENTS)
    measured = measure_campaigns(schema, realised.tally(iter_chunks(config)), campaign_config)
    measure_s = time.perf_counter() - started
    print(f"{config.users:,} users, {len(measured)} campaigns measured in {measure_s:.1f}s")

    scores, assess_s = [], []
    for r in range(replicates):
        started = time.perf_counter()
        report = assess(split(measured, np.arange(r * per, (r + 1) * per)), folds=FOLDS, seed=r, methods=FITS)
        assess_s.append(time.perf_counter() - started)
        scores.append(score(report, true_precision, true_fpr, realised.precision()))
        if r == 0:
            first = report

    rows = []
    for method in METHODS:
        keys = scores[0][method]
        mean = {k: float(np.mean([s[method][k] for s in scores])) for k in keys}
        spread = {f"{k}_std": float(np.std([s[method][k] for s in scores])) for k in ("mae_precision",)}
        rows.append({"method": method, "campaigns": per, "replicates": replicates, **mean, **spread})
    print_table(
        f"provider precision from aggregates: {len(providers)} providers x {SEGMENTS} segments, "
        f"{per} campaigns, {config.users:,} users (mean of {replicates})",
        rows,
        ["method", "mae_precision", "mae_precision_realised", "max_error_precision", "mae_fpr"]
        + ["spearman_providers", "spearman_segments", "ci95_coverage", "cv_error"],
    )

    per_provider = []
    for j, provider in enumerate(providers):
        entry = {"provider": provider, "true_precision": float(true_precision[j].mean())}
        entry["realised_precision"] = float(realised.precision()[j].mean())
        for method in METHODS:
            entry[method] = float(np.nanmean(estimates(first, method)[provider]))
        entry["mle_rank"] = first["providers"][provider]["summary"]["rank"]
        per_provider.append(entry)
    print_table("mean precision per provider (first replicate)", per_provider)

    sweep = []
    pool = measured if replicates == 1 else split(measured, np.arange(per))
    for count in SWEEP:
        if count > len(pool):
            continue
        report = assess(split(pool, np.arange(count)), folds=FOLDS, seed=0, methods=FITS)
        s = score(report, true_precision, true_fpr, realised.precision())
        sweep.append({"campaigns": count, **{f"mae_{m}": s[m]["mae_precision"] for m in METHODS}})
        sweep[-1]["spearman_mle"] = s["mle"]["spearman_providers"]
    print_table("precision error against the number of campaigns (first replicate)", sweep)

    started = time.perf_counter()
    qualified = qualified_check(config, first, *(QUICK_QUALIFIED if args.quick else FULL_QUALIFIED))
    print_table(
        f"qualified reach: true members in provider-labelled audiences ({time.perf_counter() - started:.0f}s)",
        qualified,
    )

    by = {row["method"]: row for row in rows}
    ratios = {
        "mae_precision_mle": by["mle"]["mae_precision"],
        "mae_precision_least_squares": by["least_squares"]["mae_precision"],
        "mae_precision_naive": by["naive"]["mae_precision"],
        "mae_precision_backward": by["backward"]["mae_precision"],
        "spearman_providers_mle": by["mle"]["spearman_providers"],
        "spearman_providers_least_squares": by["least_squares"]["spearman_providers"],
        "naive_over_mle_mae": by["naive"]["mae_precision"] / by["mle"]["mae_precision"],
        "qualified_median_rel_error": {q["qualified reach"]: q["median_rel_error"] for q in qualified},
        "goal_mae": GOAL_MAE,
        "goal_spearman": GOAL_SPEARMAN,
        "goals_met": bool(
            max(by["mle"]["mae_precision"], by["least_squares"]["mae_precision"]) <= GOAL_MAE
            and min(by["mle"]["spearman_providers"], by["least_squares"]["spearman_providers"])
            >= GOAL_SPEARMAN
            and per >= 200
        ),
    }
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in ratios.items()})
    write_result(
        args,
        NAME,
        rows,
        ratios,
        setup={**setup, "segments": SEGMENTS, "folds": FOLDS, "providers": providers},
        per_provider=per_provider,
        sweep=sweep,
        qualified=qualified,
        seconds={"measure": measure_s, "assess": assess_s},
    )


if __name__ == "__main__":
    main()
