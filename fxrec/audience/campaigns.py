"""Campaigns and the aggregates an agency reports about them: the ground truth fxrec judges data
providers against (issue 28, data quality).

An advertiser's campaign targets attributes (countries, an age band, a gender, a device, a surface)
and often a data provider's segment label (`dmp_b:sports`); it reaches a share of the users its
targeting accepts, with some of their impressions. After the campaign, an independent agency reports
**only aggregates**: per measured segment, the true share of the campaign's impressions that went to
users in that segment. The platform knows, per campaign, each provider's *label share*: the share of
those impressions that went to users the provider labels. `fxrec.audience.quality` estimates each
provider's precision and false-positive rate from these two columns of numbers.

`measure_campaigns` reads a population once, chunk by chunk (10^7 users never sit in memory): per
chunk it evaluates every campaign's targeting, draws who the campaign reaches (seeded per chunk and
campaign: the first k of n campaigns are the k campaigns drawn alone) and adds the reached
impressions of users in each segment (truth and every provider's labels) with one matrix product per
block of campaigns. The result, `CampaignAggregates`, is what `campaigns.json` holds:

- per campaign: its query, reached users and impressions, the agency's true shares per segment, each
  provider's label shares, and the provider labels its targeting selected on (`targeted`: a campaign
  that targeted `dmp_b:sports` says nothing about dmp_b's sports labels: everyone it reached has one);
- for the population: each provider's share of users labelled per segment (what the provider itself
  knows, no truth in it), which turns the estimated rates into a precision.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fxrec.audience.evaluate import reach
from fxrec.audience.query import Segment, leaves, parse
from fxrec.audience.schema import AudienceSchema, Columns, has_bit
from fxrec.audience.strata import AGE_BANDS
from fxrec.errors import InputError

CAMPAIGNS_FILE = "campaigns.json"
TRUTH_NAMESPACE = "interest"
BLOCK = 32  # campaigns per matrix product


class CampaignConfig(BaseModel):
    """How campaigns are drawn. `segments`: the agency measures the first `segments` segments of the
    truth namespace; `targeted`: the share of campaigns that target a provider's label of one of them."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 7
    campaigns: int = Field(default=240, ge=1)
    segments: int = Field(default=20, ge=1)
    targeted: float = Field(default=0.6, ge=0, le=1)
    reach_low: float = Field(default=0.05, gt=0, le=1)  # share of eligible users reached: log-uniform
    reach_high: float = Field(default=0.6, gt=0, le=1)
    countries: int = Field(default=10, ge=1)  # country conditions pick among the largest countries


def campaign_queries(schema: AudienceSchema, config: CampaignConfig) -> list[str]:
    """Seeded targeting queries: 1-2 attribute conditions, and with probability `targeted` one
    provider's label of a measured segment (sometimes either of two providers' labels)."""
    rng = np.random.default_rng([config.seed, 0])
    providers = [n for n in schema.segments if n != TRUTH_NAMESPACE]
    segments = schema.segments[TRUTH_NAMESPACE][: config.segments]
    countries = schema.categorical.get("country", ())[: config.countries]
    queries = []
    for _ in range(config.campaigns):
        terms = []
        for kind in rng.permutation(["country", "age", "gender", "device", "surface"])[: rng.integers(1, 3)]:
            if kind == "country" and countries:
                picked = rng.choice(len(countries), size=rng.integers(1, 4), replace=False)
                terms.append("country in {" + ", ".join(countries[i] for i in sorted(picked)) + "}")
            elif kind == "age" and "age" in schema.numeric:
                low, high = AGE_BANDS[rng.integers(1, len(AGE_BANDS) - 1)]
                terms.append(f"age in {low}..{high + int(rng.integers(0, 11))}")
            elif kind in ("gender", "device") and kind in schema.categorical:
                values = schema.categorical[kind][:2]
                terms.append(f"{kind}:{values[rng.integers(len(values))]}")
            elif kind == "surface":
                chosen = rng.choice(len(schema.surfaces), size=rng.integers(1, 3), replace=False)
                terms.append(" or ".join(f"surface = {schema.surfaces[s]}" for s in sorted(chosen)))
                terms[-1] = f"({terms[-1]})"
        if providers and rng.random() < config.targeted:
            segment = segments[rng.integers(len(segments))]
            picked = rng.choice(len(providers), size=1 + int(rng.random() < 0.3), replace=False)
            labels = " or ".join(f"{providers[p]}:{segment}" for p in picked)
            terms.append(f"({labels})" if len(picked) > 1 else labels)
        queries.append(" and ".join(terms) if terms else "age >= 0")
    return queries


@dataclass
class CampaignAggregates:
    """What fxrec knows after the campaigns ran: shares of impressions, never a user's truth.

    Arrays: `agency` [campaigns, segments] (the agency's true shares), `labels` [providers, campaigns,
    segments] (label shares), `targeted` [providers, campaigns, segments] (the campaign selected on that
    label), `population_labels` [providers, segments] (share of the population's users labelled)."""

    segments: list[str]
    providers: list[str]
    queries: list[str]
    users: np.ndarray
    impressions: np.ndarray
    agency: np.ndarray
    labels: np.ndarray
    targeted: np.ndarray
    population_users: int
    population_labels: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)

    def to_json(self) -> dict:
        campaigns = []
        for c, query in enumerate(self.queries):
            campaigns.append(
                {
                    "id": c,
                    "query": query,
                    "users": int(self.users[c]),
                    "impressions": int(self.impressions[c]),
                    "agency": [round(float(x), 8) for x in self.agency[c]],
                    "labels": {
                        p: [round(float(x), 8) for x in self.labels[j, c]]
                        for j, p in enumerate(self.providers)
                    },
                    "targeted": [
                        f"{p}:{s}"
                        for j, p in enumerate(self.providers)
                        for k, s in enumerate(self.segments)
                        if self.targeted[j, c, k]
                    ],
                }
            )
        return {
            "weighting": "impressions",
            "segments": self.segments,
            "providers": self.providers,
            "population": {
                "users": int(self.population_users),
                "label_share": {
                    p: [round(float(x), 10) for x in self.population_labels[j]]
                    for j, p in enumerate(self.providers)
                },
            },
            "campaigns": campaigns,
        }

    @classmethod
    def from_json(cls, data: dict, where: str = CAMPAIGNS_FILE) -> CampaignAggregates:
        """Checked: InputError naming every problem (a key, a length, a share outside [0, 1])."""
        problems: list[str] = []
        try:
            segments = [str(s) for s in data["segments"]]
            providers = [str(p) for p in data["providers"]]
            population = data["population"]
            rows = data["campaigns"]
            users_total = int(population["users"])
            population_labels = np.array(
                [population["label_share"][p] for p in providers], dtype=float
            ).reshape(len(providers), len(segments))
            queries = [str(r["query"]) for r in rows]
            users = np.array([r["users"] for r in rows], dtype=np.int64)
            impressions = np.array([r["impressions"] for r in rows], dtype=np.int64)
            agency = np.array([r["agency"] for r in rows], dtype=float).reshape(len(rows), len(segments))
            labels = np.array([[r["labels"][p] for r in rows] for p in providers], dtype=float).reshape(
                len(providers), len(rows), len(segments)
            )
            targeted = np.zeros(labels.shape, dtype=bool)
            for c, r in enumerate(rows):
                for tag in r.get("targeted", []):
                    provider, _, segment = str(tag).partition(":")
                    if provider in providers and segment in segments:
                        targeted[providers.index(provider), c, segments.index(segment)] = True
                    else:
                        problems.append(
                            f"{where}: campaign {c} targeted {tag!r}, not a provider:segment here"
                        )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InputError(
                f"{where}: not campaign aggregates ({type(error).__name__}: {error}); expected keys segments, "
                "providers, population {users, label_share}, campaigns [{query, users, impressions, agency, "
                "labels, targeted}] with one share per segment"
            ) from None
        for name, values in (
            ("agency", agency),
            ("labels", labels),
            ("population.label_share", population_labels),
        ):
            if not np.all(np.isfinite(values)) or values.min(initial=0) < 0 or values.max(initial=0) > 1:
                problems.append(f"{where}: {name} shares must be finite and within [0, 1]")
        if len(rows) and (impressions.min() < 0 or users.min() < 0):
            problems.append(f"{where}: campaign users and impressions must be >= 0")
        if users_total < 1:
            problems.append(f"{where}: population.users must be >= 1, got {users_total}")
        if problems:
            raise InputError(*problems)
        return cls(
            segments,
            providers,
            queries,
            users,
            impressions,
            agency,
            labels,
            targeted,
            users_total,
            population_labels,
        )

    def save(self, directory: Path) -> Path:
        path = Path(directory) / CAMPAIGNS_FILE
        path.write_text(json.dumps(self.to_json()))
        return path

    @classmethod
    def load(cls, directory: Path) -> CampaignAggregates:
        path = Path(directory)
        path = path / CAMPAIGNS_FILE if path.is_dir() else path
        if not path.is_file():
            raise InputError(f"{path}: no campaign aggregates (write them with `fxrec audience campaigns`)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: not JSON ({error})") from None
        return cls.from_json(data, str(path))


def _flags(chunk: Columns, namespace: str, count: int) -> np.ndarray:
    bits = chunk.segments[namespace]
    return np.stack([has_bit(bits, k) for k in range(count)], axis=1)


def measure_campaigns(
    schema: AudienceSchema,
    chunks: Iterable[Columns],
    config: CampaignConfig,
    queries: list[str] | None = None,
) -> CampaignAggregates:
    """Run the campaigns over a population read once in chunks, and aggregate as the agency and the
    platform would. `queries` overrides the drawn targeting (one campaign each)."""
    if TRUTH_NAMESPACE not in schema.segments or len(schema.segments) < 2:
        raise InputError(
            f"campaigns need the true segments ({TRUTH_NAMESPACE!r}) and at least one provider's labels; "
            f"the population has segment namespaces {', '.join(schema.segments) or 'none'}"
        )
    texts = campaign_queries(schema, config) if queries is None else list(queries)
    parsed = [parse(text, schema) for text in texts]
    providers = [n for n in schema.segments if n != TRUTH_NAMESPACE]
    segments = list(schema.segments[TRUTH_NAMESPACE][: config.segments])
    s, c = len(segments), len(parsed)
    targeted = np.zeros((len(providers), c, s), dtype=bool)
    for i, query in enumerate(parsed):
        for leaf in leaves(query.node):
            if isinstance(leaf, Segment) and leaf.namespace in providers and leaf.index < s:
                targeted[providers.index(leaf.namespace), i, leaf.index] = True
    low, high = np.log(config.reach_low), np.log(config.reach_high)
    rates = np.exp(np.random.default_rng([config.seed, 1]).uniform(low, high, c))
    # the share of a reached user's impressions the campaign gets
    frequency = np.random.default_rng([config.seed, 3]).uniform(0.3, 1.0, c)
    sums = np.zeros((c, s * (1 + len(providers))))
    users, impressions = np.zeros(c, dtype=np.int64), np.zeros(c, dtype=np.int64)
    population_users, population_labels = 0, np.zeros(s * len(providers))
    for index, chunk in enumerate(chunks):
        flags = np.concatenate(
            [_flags(chunk, TRUTH_NAMESPACE, s)] + [_flags(chunk, p, s) for p in providers], axis=1
        ).astype(np.float64)
        population_users += len(chunk)
        population_labels += flags[:, s:].sum(0)
        cache: dict = {}
        for lo in range(0, c, BLOCK):
            block = range(lo, min(lo + BLOCK, c))
            weights = np.zeros((len(block), len(chunk)))
            for row, i in enumerate(block):
                eligible, accepted = reach(parsed[i], chunk, cache)
                draw = np.random.default_rng([config.seed, 2, index, i])
                got = draw.binomial(accepted, frequency[i]) * (
                    eligible & (draw.random(len(chunk)) < rates[i])
                )
                weights[row] = got
                users[i] += int((got > 0).sum())
                impressions[i] += int(got.sum())
            sums[lo : lo + len(block)] += weights @ flags
    shares = sums / np.maximum(impressions, 1)[:, None]
    return CampaignAggregates(
        segments=segments,
        providers=providers,
        queries=texts,
        users=users,
        impressions=impressions,
        agency=shares[:, :s],
        labels=shares[:, s:].reshape(c, len(providers), s).transpose(1, 0, 2).copy(),
        targeted=targeted,
        population_users=population_users,
        population_labels=(population_labels / max(population_users, 1)).reshape(len(providers), s),
    )
