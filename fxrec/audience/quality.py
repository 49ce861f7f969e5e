"""How good is a data provider's segment? Its precision and false-positive rate, estimated from
campaign aggregates alone (issue 28; paper notes: shared/research/systems.md section 7).

For one provider and one segment, campaign c gives two numbers over its impressions: the provider's
label share q_c and the agency's true share p_c (fxrec.audience.campaigns). When a user's label
depends only on whether they are truly in the segment (the provider labels a true member with
probability r, its recall, and anyone else with probability f, its false-positive rate), then, for
any campaign that did not select users on this very label,

    E[q_c] = r * p_c + f * (1 - p_c)                                              (1)

whatever else the campaign targeted, and whatever weight (impressions) a user carries. fxrec fits
(r, f) in [0, 1]^2 two ways:

- `fit_least_squares`: constrained least squares of (1) across campaigns, one equation per campaign
  (scipy.optimize.lsq_linear with bounds; `weighted=True` weighs each by its impressions);
- `fit_mle`: the binomial maximum likelihood with each campaign's impressions as its trials,
  sum_c n_c [q_c log mu_c + (1 - q_c) log(1 - mu_c)] with mu_c = (1), a concave problem solved with
  L-BFGS-B inside the unit square.

Precision follows from the rates and the provider's own share of labelled users Q (no truth needed):
the population's prevalence is pi = (Q - f) / (r - f), and precision = r pi / (r pi + f (1 - pi)).
The paper's reconstruction regresses the other way, p_c = a q_c + b (1 - q_c) with a the precision;
`fit_backward` does that for comparison. Its a is the precision *inside* each campaign, which moves
with the campaign's prevalence (targeting a segment through another provider raises both), so it is
biased whenever campaigns target attributes the segment leans on; (1) holds for every campaign.
`naive` is the baseline with no model: precision = sum n p / sum n q (every true member labelled).

`cross_validate` fits on all campaigns but a held-out fold, never passing the fold's aggregates to
the fit, and predicts the fold's agency aggregates from its label shares by inverting (1); the
folds' spread gives a delete-a-group jackknife standard error for every estimate.
`qualified_reach` discounts a provider-labelled audience's reach (fxrec.audience.reach) by the
precision within that audience: the expected number of true segment members in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import lsq_linear, minimize
from scipy.stats import t as student_t

EPS = 1e-12  # keeps the binomial likelihood finite at shares of exactly 0 or 1
IDENTIFIED = 1e-9  # r - f below this: labels carry no information about the segment


@dataclass(frozen=True)
class Shares:
    """One provider's segment across campaigns: label share q_c, agency share p_c, impressions n_c."""

    label: np.ndarray
    truth: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        for name in ("label", "truth", "weight"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=float).reshape(-1))
        if not len(self.label) == len(self.truth) == len(self.weight):
            raise ValueError("label, truth and weight need one value per campaign")

    def __len__(self) -> int:
        return len(self.label)

    def take(self, rows: np.ndarray) -> Shares:
        return Shares(self.label[rows], self.truth[rows], self.weight[rows])

    def mean_truth(self) -> float:
        total = self.weight.sum()
        return float((self.weight * self.truth).sum() / total) if total > 0 else float(self.truth.mean())


@dataclass(frozen=True)
class Rates:
    """A provider's segment labels: recall r = P(label | member), false-positive rate f = P(label |
    not a member); `prevalence_hint` is used where the rates cannot tell prevalence (r <= f)."""

    recall: float
    false_positive_rate: float
    prevalence_hint: float = 0.0

    @property
    def identified(self) -> bool:
        return self.recall - self.false_positive_rate > IDENTIFIED

    def label_share(self, truth: np.ndarray | float) -> np.ndarray:
        """(1): the expected label share of an audience whose true share is `truth`."""
        return self.recall * np.asarray(truth) + self.false_positive_rate * (1 - np.asarray(truth))

    def truth_share(self, label: np.ndarray | float) -> np.ndarray:
        """(1) inverted, in [0, 1]: the true share of an audience whose label share is `label`."""
        if not self.identified:
            return np.full(np.shape(label), self.prevalence_hint)
        r, f = self.recall, self.false_positive_rate
        return np.clip((np.asarray(label, dtype=float) - f) / (r - f), 0.0, 1.0)

    def precision(self, label_share: float) -> float:
        """P(member | labelled) in an audience where `label_share` of the users are labelled."""
        pi = float(self.truth_share(label_share))
        members = self.recall * pi
        labelled = members + self.false_positive_rate * (1 - pi)
        return float(np.clip(members / labelled, 0.0, 1.0)) if labelled > 0 else 0.0


def fit_least_squares(shares: Shares, weighted: bool = False) -> Rates:
    """(1) by least squares across campaigns, r and f constrained to [0, 1]: one equation per
    campaign (the paper's), or with `weighted` each campaign's squared error counted once per
    impression (a campaign's label share is that much less noisy)."""
    design = np.stack([shares.truth, 1 - shares.truth], axis=1)
    if len(shares) == 0:
        return Rates(0.0, 0.0)
    target = shares.label
    if weighted and shares.weight.sum() > 0:
        root = np.sqrt(shares.weight / shares.weight.mean())
        design, target = design * root[:, None], target * root
    solved = lsq_linear(design, target, bounds=(0.0, 1.0), method="bvls")
    r, f = np.clip(solved.x, 0.0, 1.0)
    return Rates(float(r), float(f), shares.mean_truth())


def _negative_log_likelihood(x: np.ndarray, shares: Shares, w: np.ndarray) -> tuple[float, np.ndarray]:
    mu = np.clip(x[0] * shares.truth + x[1] * (1 - shares.truth), EPS, 1 - EPS)
    q = shares.label
    value = -(w * (q * np.log(mu) + (1 - q) * np.log1p(-mu))).sum()
    d_mu = -w * (q / mu - (1 - q) / (1 - mu))
    return float(value), np.array([(d_mu * shares.truth).sum(), (d_mu * (1 - shares.truth)).sum()])


def fit_mle(shares: Shares, start: tuple[float, float] | None = None) -> Rates:
    """(1) by binomial maximum likelihood, each campaign weighted by its impressions; r, f in [0, 1].
    Starts from the least-squares rates unless `start` is given."""
    total = shares.weight.sum()
    if len(shares) == 0 or total <= 0:
        return fit_least_squares(shares)
    w = shares.weight / total
    if start is None:
        first = fit_least_squares(shares)
        start = (first.recall, first.false_positive_rate)
    x0 = np.clip(np.asarray(start, dtype=float), 1e-6, 1 - 1e-6)
    solved = minimize(
        _negative_log_likelihood,
        x0,
        args=(shares, w),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, 1.0), (0.0, 1.0)],
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000},
    )
    r, f = np.clip(solved.x, 0.0, 1.0)
    return Rates(float(r), float(f), shares.mean_truth())


def fit_backward(shares: Shares) -> tuple[float, float]:
    """The paper's direction, p_c = a q_c + b (1 - q_c) by constrained least squares: (a, b), a read
    as the precision (see the module docstring for why fxrec does not rely on it)."""
    if len(shares) == 0:
        return 0.0, 0.0
    design = np.stack([shares.label, 1 - shares.label], axis=1)
    a, b = np.clip(lsq_linear(design, shares.truth, bounds=(0.0, 1.0), method="bvls").x, 0.0, 1.0)
    return float(a), float(b)


def naive(shares: Shares) -> tuple[float, float]:
    """No model: (precision, false-positive rate) as if every true member were labelled,
    precision = sum n p / sum n q and f = (sum n q - sum n p) / (sum n - sum n p), both in [0, 1]."""
    n, q, p = shares.weight, shares.label, shares.truth
    labelled, members, total = (n * q).sum(), (n * p).sum(), n.sum()
    precision = members / labelled if labelled > 0 else 0.0
    fpr = (labelled - members) / (total - members) if total - members > 0 else 0.0
    return float(np.clip(precision, 0, 1)), float(np.clip(fpr, 0, 1))


Fit = Callable[[Shares], Rates]


@dataclass
class CrossValidation:
    """Held-out prediction of the agency's aggregates, fold by fold.

    `folds[k]` are the campaigns (row numbers) held out in fold k, `rates[k]` the rates fitted without
    them, `error` the mean absolute error of the held-out aggregates predicted from their label shares."""

    folds: list[np.ndarray]
    rates: list[Rates]
    predicted: np.ndarray
    error: float
    weighted_error: float
    extra: dict = field(default_factory=dict)

    def jackknife(self, statistic: Callable[[Rates], float]) -> float:
        """Delete-a-group jackknife standard error of `statistic` over the folds (len(folds) - 1
        degrees of freedom: `interval` takes Student's t)."""
        values = np.array([statistic(r) for r in self.rates])
        k = len(values)
        if k < 2:
            return float("nan")
        return float(np.sqrt((k - 1) / k * ((values - values.mean()) ** 2).sum()))


def interval(estimate: float, se: float, folds: int, level: float = 0.95) -> tuple[float, float]:
    """A jackknife interval around `estimate`, Student's t with folds - 1 degrees of freedom, in [0, 1]."""
    if not np.isfinite(se) or folds < 2:
        return 0.0, 1.0
    half = float(student_t.ppf(0.5 + level / 2, folds - 1)) * se
    return max(0.0, estimate - half), min(1.0, estimate + half)


def fold_rows(count: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Campaign rows split into `folds` groups at random (seeded); fewer rows than folds: one each."""
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(g) for g in np.array_split(order, max(1, min(folds, count))) if len(g)]


def cross_validate(shares: Shares, fit: Fit, folds: int = 5, seed: int = 0) -> CrossValidation:
    """Fit on the other folds (the held-out campaigns' rows are not passed to `fit` at all), predict the
    held-out agency aggregates from their label shares."""
    groups = fold_rows(len(shares), folds, seed)
    predicted = np.full(len(shares), np.nan)
    fitted = []
    for held in groups:
        train = np.setdiff1d(np.arange(len(shares)), held, assume_unique=True)
        rates = fit(shares.take(train))
        fitted.append(rates)
        predicted[held] = rates.truth_share(shares.label[held])
    if not len(shares):
        return CrossValidation(groups, fitted, predicted, float("nan"), float("nan"))
    errors = np.abs(predicted - shares.truth)
    weight = shares.weight.sum()
    weighted = float((shares.weight * errors).sum() / weight) if weight > 0 else float(errors.mean())
    return CrossValidation(groups, fitted, predicted, float(errors.mean()), weighted)


@dataclass(frozen=True)
class QualifiedReach:
    """A provider-labelled audience: `labelled` users reach it, `qualified` of them are expected to be
    true members (`precision` = qualified / labelled, at the audience's own prevalence)."""

    labelled: float
    base: float
    precision: float
    qualified: float

    def to_dict(self) -> dict:
        return {k: float(getattr(self, k)) for k in ("labelled", "base", "precision", "qualified")}


def qualified_reach(
    reach: Callable[[str], float] | object,
    rates: Rates,
    provider: str,
    segment: str,
    target: str | None = None,
) -> QualifiedReach:
    """Expected true `segment` members among the users that `target` reaches and `provider` labels.

    `reach` is a `ReachIndex` (its estimated users) or any callable from a query to a user count. The
    audience's label share q = reach(target and provider:segment) / reach(target) gives its prevalence
    pi = (q - f) / (r - f) through (1); the labelled audience then holds reach(target) * r * pi true
    members in expectation, i.e. its reach times the precision at that prevalence."""
    count = reach if callable(reach) else (lambda expr: reach.query(expr).users)
    label = f"{provider}:{segment}"
    if target is None or not target.strip():
        labelled, base = float(count(label)), float(count(label)) + float(count(f"not {label}"))
    else:
        labelled, base = float(count(f"({target}) and {label}")), float(count(target))
    share = labelled / base if base > 0 else 0.0
    precision = rates.precision(share) if labelled > 0 else 0.0
    return QualifiedReach(labelled, base, precision, labelled * precision)
