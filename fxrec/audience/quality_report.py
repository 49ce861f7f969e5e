"""Every provider and segment of a set of campaigns assessed at once, the providers ranked, and the
`fxrec audience quality` report (a table and quality.json).

`assess(aggregates)` runs fxrec.audience.quality's estimators per provider and segment on the
campaigns that did not target that very label, with their cross-validation: the constrained least
squares and the impression-weighted binomial MLE (fxrec's answer; its jackknife interval), next to
the paper's backward regression and the naive ratio. Providers rank by their mean estimated precision
over the segments (MLE), ties broken by the lower mean false-positive rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fxrec.audience.campaigns import CampaignAggregates
from fxrec.audience.quality import (
    Rates,
    Shares,
    cross_validate,
    fit_backward,
    fit_least_squares,
    fit_mle,
    interval,
    naive,
)
from fxrec.errors import InputError

METHODS = {"least_squares": fit_least_squares, "mle": fit_mle}
PRIMARY = "mle"
MIN_CAMPAIGNS = 3  # a provider's segment needs this many usable campaigns (two rates, one to spare)


def shares_for(aggregates: CampaignAggregates, provider: int, segment: int) -> Shares:
    """The campaigns usable for one provider's segment: those that did not select on its label."""
    keep = ~aggregates.targeted[provider, :, segment] & (aggregates.impressions > 0)
    return Shares(
        aggregates.labels[provider, keep, segment],
        aggregates.agency[keep, segment],
        aggregates.impressions[keep],
    )


def assess_segment(
    shares: Shares, population_label: float, folds: int = 5, seed: int = 0, methods: dict | None = None
) -> dict:
    """One provider's segment: per method, recall, false-positive rate, precision (at the population's
    label share), cross-validated aggregate error and a 95% jackknife interval; plus the two
    baselines."""
    row: dict = {"campaigns": len(shares), "population_label_share": population_label}
    for name, fit in (methods or METHODS).items():
        rates = fit(shares)
        cv = cross_validate(shares, fit, folds, seed)
        precision = rates.precision(population_label)
        se = cv.jackknife(lambda r: r.precision(population_label))
        row[name] = {
            "recall": rates.recall,
            "false_positive_rate": rates.false_positive_rate,
            "precision": precision,
            "precision_se": se,
            "precision_ci": list(interval(precision, se, len(cv.folds))),
            "false_positive_rate_se": cv.jackknife(lambda r: r.false_positive_rate),
            "cv_error": cv.error,
            "cv_error_weighted": cv.weighted_error,
        }
    precision, fpr = naive(shares)
    row["naive"] = {"precision": precision, "false_positive_rate": fpr}
    row["backward"] = {"precision": fit_backward(shares)[0]}
    return row


def assess(
    aggregates: CampaignAggregates, folds: int = 5, seed: int = 0, methods: dict | None = None
) -> dict:
    """quality.json's content: per provider and segment (`segments`), per provider a summary and rank.
    `methods` (name -> fit) replaces METHODS; it must hold PRIMARY."""
    if len(aggregates) < MIN_CAMPAIGNS:
        raise InputError(
            f"campaign aggregates: {len(aggregates)} campaign(s); at least {MIN_CAMPAIGNS} are needed "
            "to fit a provider's two rates"
        )
    if folds < 2:
        raise InputError(f"folds: at least 2 are needed for cross-validation, got {folds}")
    providers: dict[str, dict] = {}
    for j, provider in enumerate(aggregates.providers):
        rows = {}
        for k, segment in enumerate(aggregates.segments):
            shares = shares_for(aggregates, j, k)
            if len(shares) < MIN_CAMPAIGNS:
                rows[segment] = {"campaigns": len(shares), "skipped": f"fewer than {MIN_CAMPAIGNS} campaigns"}
                continue
            label = float(aggregates.population_labels[j, k])
            rows[segment] = assess_segment(shares, label, folds, seed, methods)
        providers[provider] = {"segments": rows, "summary": _summary(rows, list(methods or METHODS), folds)}
    order = sorted(
        (p for p in providers if providers[p]["summary"]["segments"]),
        key=lambda p: (-providers[p]["summary"]["precision"], providers[p]["summary"]["false_positive_rate"]),
    )
    for rank, provider in enumerate(order, start=1):
        providers[provider]["summary"]["rank"] = rank
    return {
        "method": PRIMARY,
        "campaigns": len(aggregates),
        "folds": folds,
        "seed": seed,
        "segments": aggregates.segments,
        "ranking": order,
        "providers": providers,
    }


def _summary(rows: dict, methods: list[str], folds: int) -> dict:
    fitted = [r for r in rows.values() if "skipped" not in r]
    if not fitted:
        return {"segments": 0, "rank": None}

    def mean(method: str, key: str) -> float:
        return float(np.mean([r[method][key] for r in fitted]))

    precision = mean(PRIMARY, "precision")
    # the segments' errors taken as independent (each segment has its own aggregates and labels)
    se = float(np.sqrt(np.sum([r[PRIMARY]["precision_se"] ** 2 for r in fitted])) / len(fitted))
    return {
        "segments": len(fitted),
        "precision": precision,
        "precision_se": se,
        "precision_ci": list(interval(precision, se, folds)),
        "false_positive_rate": mean(PRIMARY, "false_positive_rate"),
        "recall": mean(PRIMARY, "recall"),
        "cv_error": {m: mean(m, "cv_error") for m in methods},
        "precision_least_squares": mean("least_squares", "precision"),
        "precision_naive": mean("naive", "precision"),
        "rank": None,
    }


def estimates(report: dict, method: str) -> dict[str, np.ndarray]:
    """[segments] estimated precision per provider for `method` (least_squares, mle, naive, backward);
    NaN where a segment was skipped."""
    out = {}
    for provider, entry in report["providers"].items():
        rows = [entry["segments"][s] for s in report["segments"]]
        out[provider] = np.array([r[method]["precision"] if method in r else np.nan for r in rows])
    return out


def rates_of(report: dict, provider: str, segment: str, method: str = PRIMARY) -> Rates:
    """The fitted rates of one provider's segment in a report (for `qualified_reach`)."""
    try:
        row = report["providers"][provider]["segments"][segment]
        fitted = row[method]
    except KeyError:
        raise InputError(f"quality report: no {method} estimate for {provider}:{segment}") from None
    return Rates(fitted["recall"], fitted["false_positive_rate"])


def table_rows(report: dict) -> list[dict]:
    """One row per provider, in rank order: what the command prints."""
    rows = []
    for provider in [*report["ranking"], *[p for p in report["providers"] if p not in report["ranking"]]]:
        s = report["providers"][provider]["summary"]
        if not s["segments"]:
            rows.append({"provider": provider, "rank": "-", "segments": 0})
            continue
        rows.append(
            {
                "provider": provider,
                "rank": s["rank"],
                "segments": s["segments"],
                "precision": s["precision"],
                "ci95": (s["precision_ci"][1] - s["precision_ci"][0]) / 2,
                "fpr": s["false_positive_rate"],
                "recall": s["recall"],
                "cv_err_mle": s["cv_error"]["mle"],
                "cv_err_ls": s["cv_error"]["least_squares"],
                "precision_ls": s["precision_least_squares"],
                "precision_naive": s["precision_naive"],
            }
        )
    return rows


def write_report(report: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=float))
    return path
