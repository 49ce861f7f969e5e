"""A simulated population of users with the attributes an advertiser targets, in seeded chunks.

In the simulator's style (fxrec.data.simulator): everything is vectorised and seeded, and the same
config gives the same users. Users come in chunks (`iter_chunks`), each drawn from its own seed, so
a population of 10^7 users is written to Parquet (`write_population`) without ever sitting in memory.

- age in years (13..80) by advertiser age band, the band mix varying by country;
- gender (f, m, u), a country (Zipf: a few large, a long tail of small ones), a region within it,
  a device (ios, android, web; the mix varies by country);
- surface activity: a heavy-tailed number of impressions over the window split across the surfaces
  (feed, stories, video) by a per-user taste that younger users tilt towards video;
- interest segments: many small yes/no segments with a long tail of prevalence (from ~25% down to a
  few in ten thousand), each leaning by age band, gender and country;
- data providers: each labels the same segments as a noisy copy of the truth with its own precision
  and recall (per segment, around the provider's level); `provider_truth` gives the rates the labels
  were drawn with, the ground truth for judging providers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from fxrec.audience.schema import AudienceSchema, Columns, pack_bits

AGE_BANDS: tuple[tuple[int, int], ...] = (
    (13, 17),
    (18, 24),
    (25, 34),
    (35, 44),
    (45, 54),
    (55, 64),
    (65, 80),
)
GENDERS = ("f", "m", "u")
DEVICES = ("ios", "android", "web")
COUNTRIES = (
    "US", "IN", "BR", "ID", "MX", "GB", "DE", "FR", "PH", "TR", "VN", "JP", "IT", "ES", "CA", "TH", "EG", "AR",
    "CO", "PL", "NG", "KR", "AU", "SA", "NL", "MY", "CL", "SE", "BE", "CH", "PT", "AT", "NO", "DK", "FI",
    "IE", "NZ", "GR", "CZ", "HU",
)  # fmt: skip
NAMED_INTERESTS = (
    "sports", "outdoor", "travel", "fashion", "gaming", "music", "cooking", "fitness", "tech", "finance",
    "movies", "parenting", "pets", "cars", "beauty", "books", "gardening", "crypto", "photography", "diy",
)  # fmt: skip


class ProviderConfig(BaseModel):
    """A data provider: its segment labels have about this precision and recall (per segment they
    scatter around it by `spread` on the logit scale)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    precision: float = Field(gt=0, lt=1)
    recall: float = Field(gt=0, le=1)
    spread: float = Field(default=0.3, ge=0)


class PopulationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 11
    users: int = Field(default=100_000, ge=1)
    chunk_size: int = Field(default=100_000, ge=1)
    countries: int = Field(default=30, ge=1, le=len(COUNTRIES))
    country_skew: float = 1.3  # Zipf exponent of country sizes
    regions_per_country: int = Field(default=8, ge=1)
    interests: int = Field(default=200, ge=1)
    interest_top: float = Field(default=0.25, gt=0, lt=1)  # prevalence of the most common segment
    interest_tail: float = 1.2  # prevalence of segment k ~ (1 + k/3)^-interest_tail
    surfaces: list[str] = ["feed", "stories", "video"]
    surface_share: list[float] = [0.55, 0.25, 0.20]
    mean_log_impressions: float = 1.5  # impressions = 1 + Poisson(lognormal(mean, sigma))
    sigma_log_impressions: float = 1.2
    providers: list[ProviderConfig] = [
        ProviderConfig(name="dmp_a", precision=0.9, recall=0.6),
        ProviderConfig(name="dmp_b", precision=0.8, recall=0.8),
        ProviderConfig(name="dmp_c", precision=0.7, recall=0.5),
        ProviderConfig(name="dmp_d", precision=0.6, recall=0.9),
        ProviderConfig(name="dmp_e", precision=0.5, recall=0.4),
    ]


def interest_names(count: int) -> tuple[str, ...]:
    named = NAMED_INTERESTS[:count]
    return named + tuple(f"topic_{k:03d}" for k in range(len(named), count))


def audience_schema(config: PopulationConfig) -> AudienceSchema:
    countries = COUNTRIES[: config.countries]
    regions = tuple(f"{c}-{r + 1}" for c in countries for r in range(config.regions_per_country))
    names = interest_names(config.interests)
    return AudienceSchema(
        categorical={"gender": GENDERS, "country": countries, "region": regions, "device": DEVICES},
        numeric={"age": (AGE_BANDS[0][0], AGE_BANDS[-1][1])},
        segments={"interest": names, **{p.name: names for p in config.providers}},
        surfaces=tuple(config.surfaces),
    )


class _World:
    """The population's fixed parameters (drawn once from the seed), shared by every chunk."""

    def __init__(self, config: PopulationConfig):
        rng = np.random.default_rng([config.seed, 0])
        c, k, bands = config.countries, config.interests, len(AGE_BANDS)
        sizes = 1.0 / np.arange(1, c + 1) ** config.country_skew
        self.country_p = sizes / sizes.sum()
        regions = 1.0 / np.arange(1, config.regions_per_country + 1)
        self.region_p = regions / regions.sum()
        base_bands = np.array([0.08, 0.2, 0.24, 0.18, 0.14, 0.1, 0.06])
        self.band_p = rng.dirichlet(base_bands * 40, size=c)  # [country, band]
        self.device_p = rng.dirichlet(np.array([0.35, 0.5, 0.15]) * 20, size=c)
        self.base = config.interest_top / (1 + np.arange(k) / 3) ** config.interest_tail
        self.lean_band = rng.lognormal(0, 0.6, size=(k, bands))
        self.lean_gender = rng.lognormal(0, 0.3, size=(k, len(GENDERS)))
        self.lean_country = rng.lognormal(0, 0.4, size=(k, c))
        norm = self.lean_band.mean(1) * self.lean_gender.mean(1) * self.lean_country.mean(1)
        self.base = self.base / norm
        # providers: per-segment precision and recall around the provider's level
        self.precision, self.recall, self.false_positive = provider_rates(config, self.prevalence(config))

    def prevalence(self, config: PopulationConfig) -> np.ndarray:
        """Each segment's expected share of users (under the population's mixes)."""
        gender = np.array([0.49, 0.47, 0.04])
        p = (
            self.base[:, None, None, None]
            * self.lean_band[:, :, None, None]
            * self.lean_gender[:, None, :, None]
            * self.lean_country[:, None, None, :]
        ).clip(max=0.95)
        joint = (self.country_p[:, None] * self.band_p).T[:, None, :] * gender[
            None, :, None
        ]  # [band, gender, country]
        return (p * joint[None]).sum(axis=(1, 2, 3))


def provider_rates(config: PopulationConfig, prevalence: np.ndarray) -> tuple[np.ndarray, ...]:
    """[providers, segments] precision, recall and the false-positive rate they imply for a segment of
    the given prevalence: P(label | not in segment) = prevalence * recall * (1 - precision) /
    (precision * (1 - prevalence))."""
    rng = np.random.default_rng([config.seed, 1])
    k = len(prevalence)
    precision, recall = [], []
    for provider in config.providers:
        logit_p = np.log(provider.precision / (1 - provider.precision)) + rng.normal(0, provider.spread, k)
        r = min(provider.recall, 1 - 1e-6)
        logit_r = np.log(r / (1 - r)) + rng.normal(0, provider.spread, k)
        precision.append(1 / (1 + np.exp(-logit_p)))
        recall.append(1 / (1 + np.exp(-logit_r)))
    p, r = np.array(precision), np.array(recall)
    fpr = (prevalence * r * (1 - p) / (p * (1 - prevalence))).clip(0, 1)
    return p, r, fpr


def chunk_count(config: PopulationConfig) -> int:
    return -(-config.users // config.chunk_size)


def generate_chunk(config: PopulationConfig, index: int, world: _World | None = None) -> Columns:
    """Chunk `index` of the population (users index*chunk_size ...), from its own seed."""
    start = index * config.chunk_size
    n = min(config.chunk_size, config.users - start)
    if n <= 0:
        raise ValueError(f"chunk {index} is past the population's {config.users} users")
    return _users(config, world or _World(config), start, n, np.random.default_rng([config.seed, 2, index]))


def past_users(config: PopulationConfig, count: int, seed: int = 0) -> Columns:
    """`count` users of the same world who are not in the population (ids from `config.users` on): a
    past log to learn strata from."""
    return _users(config, _World(config), config.users, count, np.random.default_rng([config.seed, 3, seed]))


def _users(config: PopulationConfig, world: _World, start: int, n: int, rng: np.random.Generator) -> Columns:
    country = rng.choice(len(world.country_p), size=n, p=world.country_p)
    region = country * config.regions_per_country + rng.choice(
        config.regions_per_country, size=n, p=world.region_p
    )
    cum = world.band_p.cumsum(1)[country]
    band = (rng.random(n)[:, None] > cum).sum(1).clip(max=len(AGE_BANDS) - 1)
    lows = np.array([b[0] for b in AGE_BANDS])[band]
    highs = np.array([b[1] for b in AGE_BANDS])[band]
    age = lows + (rng.random(n) * (highs - lows + 1)).astype(np.int64)
    gender = rng.choice(3, size=n, p=[0.49, 0.47, 0.04])
    device = (rng.random(n)[:, None] > world.device_p.cumsum(1)[country]).sum(1).clip(max=2)
    # surface activity
    total = 1 + rng.poisson(
        rng.lognormal(config.mean_log_impressions, config.sigma_log_impressions, n).clip(max=5e4)
    )
    share = np.asarray(config.surface_share, dtype=float)
    taste = rng.gamma(np.broadcast_to(share * 3, (n, len(share))))
    if "video" in config.surfaces:
        taste[:, config.surfaces.index("video")] *= np.array([2.0, 1.6, 1.2, 1.0, 0.8, 0.6, 0.5])[band]
    taste /= taste.sum(1, keepdims=True)
    impressions = rng.multinomial(total, taste).astype(np.int32)
    # interests: Bernoulli per segment, leaning by band, gender and country
    segments = {}
    truth = np.empty((n, config.interests), dtype=bool)
    for lo in range(0, config.interests, 64):
        hi = min(lo + 64, config.interests)
        p = world.base[lo:hi] * world.lean_band[lo:hi, band].T * world.lean_gender[lo:hi, gender].T
        p = (p * world.lean_country[lo:hi, country].T).clip(max=0.95)
        truth[:, lo:hi] = rng.random((n, hi - lo), dtype=np.float32) < p
    words = (config.interests + 63) // 64
    segments["interest"] = pack_bits(truth, words)
    rows_in, cols_in = np.nonzero(truth)
    for j, provider in enumerate(config.providers):
        # in the segment: labelled with P = recall; outside it: with P = the false-positive rate, drawn
        # sparsely as Poisson(n * -log(1 - fpr)) positions with replacement (P(marked) = fpr exactly)
        labels = np.zeros_like(truth)
        kept = rng.random(len(rows_in)) < world.recall[j][cols_in]
        labels[rows_in[kept], cols_in[kept]] = True
        counts = rng.poisson(n * -np.log1p(-world.false_positive[j].clip(max=1 - 1e-9)))
        cols = np.repeat(np.arange(config.interests), counts)
        rows = rng.integers(0, n, len(cols))
        outside = ~truth[rows, cols]
        labels[rows[outside], cols[outside]] = True
        segments[provider.name] = pack_bits(labels, words)
    return Columns(
        user_id=np.arange(start, start + n, dtype=np.int64),
        categorical={
            "gender": gender.astype(np.int16),
            "country": country.astype(np.int16),
            "region": region.astype(np.int16),
            "device": device.astype(np.int16),
        },
        numeric={"age": age.astype(np.int16)},
        segments=segments,
        impressions=impressions,
    )


def iter_chunks(config: PopulationConfig) -> Iterator[Columns]:
    world = _World(config)
    for index in range(chunk_count(config)):
        yield generate_chunk(config, index, world)


def provider_truth(config: PopulationConfig) -> dict:
    """The rates each provider's labels were drawn with, per segment (the data-quality ground truth)."""
    world = _World(config)
    names = interest_names(config.interests)
    return {
        "segments": list(names),
        "prevalence": world.prevalence(config).tolist(),
        "providers": {
            p.name: {
                "precision": world.precision[j].tolist(),
                "recall": world.recall[j].tolist(),
                "false_positive_rate": world.false_positive[j].tolist(),
            }
            for j, p in enumerate(config.providers)
        },
    }


SCHEMA_FILE, TRUTH_FILE = "schema.yaml", "providers.json"


def write_population(
    config: PopulationConfig, out: Path, track: Callable[[Iterable, int], Iterable] | None = None
) -> Path:
    """The population as Parquet chunks under `out` (part-00000.parquet, ...), with its schema.yaml
    and providers.json (the providers' true rates). `track(chunks, count)`: a progress bar around the
    chunks (fxrec's jobs pass rich's)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    schema = audience_schema(config)
    schema.save(out / SCHEMA_FILE)
    (out / TRUTH_FILE).write_text(json.dumps(provider_truth(config)))
    chunks = iter_chunks(config)
    for index, chunk in enumerate(track(chunks, chunk_count(config)) if track else chunks):
        pq.write_table(chunk.to_arrow(schema), out / f"part-{index:05d}.parquet")
    return out


def read_population(path: Path) -> tuple[AudienceSchema, Iterator[Columns]]:
    """A written population: its schema and its chunks, read one at a time."""
    path = Path(path)
    schema = AudienceSchema.load(path / SCHEMA_FILE)

    def chunks() -> Iterator[Columns]:
        for part in sorted(path.glob("part-*.parquet")):
            yield Columns.from_arrow(pq.read_table(part), schema)

    return schema, chunks()
