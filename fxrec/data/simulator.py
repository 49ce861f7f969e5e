"""A simulated ads world whose impression log looks like an ads system, not uniform noise.

- Users have latent interests (a unit vector over `topics`) that drift every day, an activity
  level (heavy-tailed), demographics, and a cohort; one cohort is a small minority (~5%) that
  behaves differently (night-active, video-loving, steeper response to relevance).
- Ads belong to advertisers; an ad's topic vector scatters around its advertiser's centroid. New
  users and new ads arrive every day (cold start) and ads retire after a lifetime.
- Surfaces (feed, stories, video) differ in base rate, traffic share and feature availability
  (stories has no position; only video knows what the user is watching).
- Each impression comes from a noisy retrieval + auction among a few candidates; clicks are
  drawn from a known nonlinear ground truth over interest x topic x context plus position bias.
- Conversions follow clicks with advertiser-specific log-normal delays (`conversion_delay_s`).
- Optionally (`intent_strength > 0`), short-term intent: each click pulls the user's next clicks
  toward the topics a fixed topic-transition map links to what was clicked, fading with every
  later click. The pull lives in the order of the user's clicks, not in who the user is, so only a
  model reading the history (and how recent each entry is) can learn it.
- Optionally (`candidate_log_rate > 0`), a candidate log: for that share of requests, every eligible
  (active) ad with its bid and the true click, conversion and hide probabilities
  (`fxrec.data.candidates`), so retrieval and early-stage ranking can be measured.
- Optionally (`quality_events`), a negative quality event: `hide`, drawn for unclicked impressions from
  an ad-specific annoyance, a new column at the end of the impression log.

Both options draw from generators of their own: the impression log's existing columns are the same
with or without them.

Everything is vectorised over a day's impressions and seeded: the same config gives the same log.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from fxrec.data.eventlog import write_events
from fxrec.data.schema import DatasetSpec, FeatureSpec


class SurfaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    share: float  # share of impressions
    base_logit: float  # click base rate on the logit scale
    positions: int = 1  # slots per request; 1 means the surface has no position feature


class SimulatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 7
    days: int = Field(default=14, ge=2)
    start_date: str = "2026-01-05"
    impressions_per_day: int = 72_000
    users: int = 10_000
    new_users_per_day: int = 300
    advertisers: int = 300
    ads: int = 1_500
    new_ads_per_day: int = 100
    topics: int = 16
    interest_drift: float = 0.08
    minority_share: float = 0.05
    candidates: int = 6
    attribution_window_days: float = 7.0
    history_length: int = 20
    # short-term intent (0 turns it off and leaves the log as it was): the logit gains
    # intent_strength * tanh(intent . T . topic(ad)), intent being the recency-weighted mean topic of
    # the user's last `intent_memory` clicks, each click's weight halving every `intent_halflife` clicks
    intent_strength: float = 0.0
    intent_halflife: float = 3.0
    intent_memory: int = 24
    # adds `hist_surface_id`, the surface of each history click: per-entry event types for Kunlun's
    # event-level towers (the spec declares it as the other histories' `event_types`)
    history_surfaces: bool = False
    # the candidate log (fxrec.data.candidates): share of requests whose whole eligible set is logged
    candidate_log_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # adds `hide` (a negative quality event on unclicked impressions) to the impression log
    quality_events: bool = False
    surfaces: list[SurfaceConfig] = [
        SurfaceConfig(name="feed", share=0.55, base_logit=-3.1, positions=6),
        SurfaceConfig(name="stories", share=0.25, base_logit=-3.6),
        SurfaceConfig(name="video", share=0.20, base_logit=-2.8, positions=3),
    ]


DEVICES, COUNTRIES, AGE_BUCKETS, FORMATS, WATCH_CONTEXTS = 3, 24, 7, 3, 8


def dataset_spec(config: SimulatorConfig) -> DatasetSpec:
    """The simulator's features. `vm: false` marks what only the FM sees (the feature gap)."""
    total_users = config.users + config.new_users_per_day * config.days
    total_ads = config.ads + config.new_ads_per_day * config.days
    users = int(2 ** np.ceil(np.log2(total_users + 1)))
    ads = int(2 ** np.ceil(np.log2(total_ads + 1)))
    types = "hist_surface_id" if config.history_surfaces else None  # each history click's surface
    return DatasetSpec(
        name="simulated-ads",
        surfaces=[s.name for s in config.surfaces],
        tasks=["click", "conversion", *(["hide"] if config.quality_events else [])],  # hide: the quality event
        history_length=config.history_length,
        features=[
            FeatureSpec(name="user_id", kind="sparse", cardinality=users, vm=False),
            FeatureSpec(name="item_id", kind="sparse", cardinality=ads),
            FeatureSpec(name="advertiser_id", kind="sparse", cardinality=config.advertisers + 1),
            FeatureSpec(name="surface_id", kind="sparse", cardinality=len(config.surfaces) + 1, vm=False),
            FeatureSpec(name="position", kind="sparse", cardinality=8),
            FeatureSpec(name="hour", kind="sparse", cardinality=25),
            FeatureSpec(name="device", kind="sparse", cardinality=DEVICES + 1),
            FeatureSpec(name="age_bucket", kind="sparse", cardinality=AGE_BUCKETS + 1),
            FeatureSpec(name="country", kind="sparse", cardinality=COUNTRIES + 1, vm=False),
            FeatureSpec(name="ad_format", kind="sparse", cardinality=FORMATS + 1),
            FeatureSpec(name="ad_category", kind="sparse", cardinality=config.topics + 1),
            FeatureSpec(name="watch_context", kind="sparse", cardinality=WATCH_CONTEXTS + 1),
            FeatureSpec(name="user_segments", kind="multi", cardinality=config.topics + 1, vm=False),
            FeatureSpec(name="bid", kind="dense"),
            FeatureSpec(name="ad_age_days", kind="dense"),
            FeatureSpec(name="user_past_impressions", kind="dense", vm=False),
            FeatureSpec(name="hist_item_id", kind="sequence", source="item_id", table="item_id", vm=False, event_types=types),
            FeatureSpec(
                name="hist_advertiser_id", kind="sequence", source="advertiser_id", table="advertiser_id", vm=False, event_types=types
            ),
            *(
                [FeatureSpec(name="hist_surface_id", kind="sequence", source="surface_id", table="surface_id", vm=False)]
                if config.history_surfaces
                else []
            ),
        ],
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class AdsWorld:
    """The latent state of the simulated world; `day(t)` draws day t's impressions."""

    def __init__(self, config: SimulatorConfig):
        self.config = c = config
        self.rng = rng = np.random.default_rng(c.seed)
        k = c.topics
        n_users = c.users + c.new_users_per_day * c.days
        n_ads = c.ads + c.new_ads_per_day * c.days
        # Users: arrival day, cohort (2 = the minority), interests, activity, demographics.
        self.user_arrival = np.concatenate([np.zeros(c.users, int), np.repeat(np.arange(1, c.days + 1), c.new_users_per_day)])
        shares = np.array([0.70 - c.minority_share / 2, 0.30 - c.minority_share / 2, c.minority_share])
        self.user_cohort = rng.choice(3, size=n_users, p=shares / shares.sum())
        cohort_centers = _unit(rng.normal(size=(3, k))) * 1.5
        self.interest = _unit(cohort_centers[self.user_cohort] + rng.normal(size=(n_users, k)))
        self.activity = rng.lognormal(0.0, 1.0, size=n_users)
        self.impressions_before_today = np.zeros(n_users, dtype=np.int64)
        self.device = rng.choice(DEVICES, size=n_users, p=[0.45, 0.45, 0.10])
        self.country = rng.zipf(1.6, size=n_users) % COUNTRIES
        self.age_bucket = rng.choice(AGE_BUCKETS, size=n_users)
        self.user_bias = rng.normal(0.0, 0.35, size=n_users)
        # Stated interests at sign-up: the two strongest topics, sometimes wrong.
        noisy = self.interest + rng.normal(0, 0.25, size=self.interest.shape)
        self.segments = np.argsort(-noisy, axis=1)[:, :2]
        # Advertisers and ads.
        adv_topic = _unit(rng.normal(size=(c.advertisers, k)))
        self.adv_conversion_logit = rng.normal(-2.0, 0.7, size=c.advertisers)
        self.adv_delay_median_s = np.exp(rng.uniform(np.log(600), np.log(3 * 86400), size=c.advertisers))
        self.ad_advertiser = rng.integers(0, c.advertisers, size=n_ads)
        self.ad_topic = _unit(adv_topic[self.ad_advertiser] + 0.6 * rng.normal(size=(n_ads, k)))
        self.ad_quality = rng.normal(0.0, 0.4, size=n_ads)
        self.ad_format = rng.choice(FORMATS, size=n_ads, p=[0.5, 0.3, 0.2])
        self.ad_bid = rng.lognormal(0.0, 0.5, size=n_ads).astype(np.float32)
        self.ad_start = np.concatenate([np.zeros(c.ads, int), np.repeat(np.arange(1, c.days + 1), c.new_ads_per_day)])
        self.ad_end = self.ad_start + rng.integers(4, 15, size=n_ads)
        self.ad_end[: c.ads] = rng.integers(2, c.days + 2, size=c.ads)  # the initial ads retire at staggered times
        # Context effects of the ground truth.
        self.hour_phase = rng.uniform(0, 24, size=k)
        self.device_format = rng.normal(0.0, 0.3, size=(DEVICES, FORMATS))
        self.base_logit = np.array([s.base_logit for s in c.surfaces])
        if c.intent_strength > 0:  # its own generator: the other draws stay as they were without it
            extra = np.random.default_rng([c.seed, 1])
            self.transition = extra.normal(size=(k, k))
            self.recent_clicks = np.full((n_users, c.intent_memory), -1)  # ad ids, most recent first
        # How much an ad annoys (hides): its own generator, so the other draws stay as they were.
        self.ad_annoyance = np.random.default_rng([c.seed, 2]).normal(0.0, 1.0, size=n_ads)
        self.candidates_today: pa.Table | None = None  # day(t)'s candidate log, when candidate_log_rate > 0

    def drift(self) -> None:
        c = self.config
        self.interest = _unit(self.interest + c.interest_drift * self.rng.normal(size=self.interest.shape))

    def day(self, t: int, event_id_start: int) -> pa.Table:
        c, rng = self.config, self.rng
        n = c.impressions_per_day
        # Who is active: arrived users, weighted by activity.
        arrived = np.flatnonzero(self.user_arrival <= t)
        weights = self.activity[arrived]
        user = arrived[rng.choice(len(arrived), size=n, p=weights / weights.sum())]
        cohort = self.user_cohort[user]
        minority = cohort == 2
        # Surface: global shares, with the minority cohort twice as likely to be on video.
        share = np.array([s.share for s in c.surfaces])
        probs = np.tile(share, (n, 1))
        video = [i for i, s in enumerate(c.surfaces) if s.name == "video"]
        if video:
            probs[minority, video[0]] *= 2.0
        probs /= probs.sum(axis=1, keepdims=True)
        surface = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
        # Time of day: a diurnal curve; the minority is night-active.
        day_hours = (rng.normal(19.0, 4.0, n) % 24).astype(int)
        night_hours = (rng.normal(1.0, 2.5, n) % 24).astype(int)
        hour = np.where(minority, night_hours, day_hours)
        day_start = int(dt.datetime.fromisoformat(c.start_date).replace(tzinfo=dt.UTC).timestamp()) + t * 86400
        ts = day_start + hour * 3600 + rng.integers(0, 3600, n)
        # Retrieval + auction: a few active candidates, chosen by a noisy relevance x bid score.
        active = np.flatnonzero((self.ad_start <= t) & (self.ad_end > t))
        candidates = active[rng.integers(0, len(active), size=(n, c.candidates))]
        noisy_interest = self.interest[user] + 0.7 * rng.normal(size=(n, c.topics))
        relevance = np.einsum("nk,nck->nc", noisy_interest, self.ad_topic[candidates])
        auction = 2.0 * relevance + np.log(self.ad_bid[candidates]) + rng.gumbel(size=(n, c.candidates))
        ad = candidates[np.arange(n), auction.argmax(axis=1)]
        slots = np.array([s.positions for s in c.surfaces])[surface]
        position = np.minimum(rng.geometric(0.45, size=n), slots)
        watching = np.where(rng.random(n) < 0.6, self.interest[user].argmax(axis=1), rng.integers(0, c.topics, n)) % WATCH_CONTEXTS
        # Ground truth click probability.
        logit, affinity, topic = self.click_logit(user, ad, surface, hour, watching, position)
        draw = rng.random(n)
        if c.intent_strength > 0:
            logit = logit + self.intent(user, ad, ts, draw, logit)
        click = draw < 1 / (1 + np.exp(-logit))
        # Conversions after clicks, with advertiser-specific delays.
        advertiser = self.ad_advertiser[ad]
        p_conversion = 1 / (1 + np.exp(-(self.adv_conversion_logit[advertiser] + 0.6 * affinity)))
        delay = rng.lognormal(np.log(self.adv_delay_median_s[advertiser]), 1.0)
        converted = click & (rng.random(n) < p_conversion) & (delay < c.attribution_window_days * 86400)

        order = np.lexsort((np.arange(n), ts))
        if c.candidate_log_rate > 0:
            rank = np.empty(n, np.int64)
            rank[order] = np.arange(n)
            request = dict(user=user, surface=surface, hour=hour, watching=watching, position=position, ts=ts, ad=ad)
            self.candidates_today = self.candidate_log(t, event_id_start + rank, request, active, candidates)
        has_position = slots > 1
        is_video = np.array([s.name == "video" for s in c.surfaces])[surface]
        columns = {
            "ts": ts,
            "user_id": user.astype(np.int64),
            "item_id": ad.astype(np.int64),
            "surface": pa.array(np.array([s.name for s in c.surfaces])[surface]),
            "advertiser_id": advertiser.astype(np.int64),
            "surface_id": surface.astype(np.int64),
            "position": pa.array(position.astype(np.int64), mask=~has_position),
            "hour": hour.astype(np.int64),
            "device": self.device[user].astype(np.int64),
            "age_bucket": self.age_bucket[user].astype(np.int64),
            "country": self.country[user].astype(np.int64),
            "ad_format": self.ad_format[ad].astype(np.int64),
            "ad_category": topic.astype(np.int64),
            "watch_context": pa.array(watching.astype(np.int64), mask=~is_video),
            "user_segments": pa.FixedSizeListArray.from_arrays(self.segments[user].reshape(-1).astype(np.int64), 2).cast(pa.list_(pa.int64())),
            "bid": self.ad_bid[ad],
            "ad_age_days": (t - self.ad_start[ad]).astype(np.float32),
            "user_past_impressions": np.log1p(self.past_impressions(user, ts)).astype(np.float32),
            "click": click.astype(np.float32),
            "oracle_logit": logit.astype(np.float32),  # the ground truth, for oracle NE; never a feature
            "conversion": converted.astype(np.float32),
            "conversion_delay_s": pa.array(delay.astype(np.float32), mask=~converted),
        }
        if c.quality_events:
            hide_draw = np.random.default_rng([c.seed, 2, t]).random(n)
            columns["hide"] = (~click & (hide_draw < self.hide_probability(user, ad, affinity))).astype(np.float32)
        table = pa.table({k: (v if isinstance(v, pa.Array) else pa.array(v)) for k, v in columns.items()}).take(pa.array(order))
        event_id = np.arange(event_id_start, event_id_start + n, dtype=np.int64)
        return table.add_column(0, "event_id", pa.array(event_id))

    def click_logit(
        self, user: np.ndarray, ad: np.ndarray, surface: np.ndarray, hour: np.ndarray, watching: np.ndarray, position: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ground truth's click logit of (user, ad) pairs in their request's context (without the
        short-term intent term), the affinity it is built on, and each ad's topic."""
        c = self.config
        minority = self.user_cohort[user] == 2
        affinity = np.einsum("nk,nk->n", self.interest[user], self.ad_topic[ad]) * np.sqrt(c.topics) / 2
        slope = np.where(minority, 1.6, 1.0)
        topic = self.ad_topic[ad].argmax(axis=1)
        logit = (
            self.base_logit[surface]
            + slope * (1.8 * np.tanh(0.9 * affinity) + 0.35 * affinity**2)
            + self.ad_quality[ad]
            + self.user_bias[user]
            + 0.45 * np.sin(2 * np.pi * (hour - self.hour_phase[topic]) / 24)
            + self.device_format[self.device[user], self.ad_format[ad]]
            + np.where(minority & (self.ad_format[ad] == 1), 0.8, 0.0)
            + np.where(np.array([s.name == "video" for s in c.surfaces])[surface] & (watching == topic % WATCH_CONTEXTS), 0.5, 0.0)
            - 0.45 * np.log(position)
        )
        return logit, affinity, topic

    def conversion_probability(self, ad: np.ndarray, affinity: np.ndarray) -> np.ndarray:
        """P(a conversion attributed to the click | click): the conversion draw times the chance that its
        delay falls inside the attribution window (log-normal delays, sigma 1)."""
        advertiser = self.ad_advertiser[ad]
        p = 1 / (1 + np.exp(-(self.adv_conversion_logit[advertiser] + 0.6 * affinity)))
        z = np.log(self.config.attribution_window_days * 86400) - np.log(self.adv_delay_median_s)
        in_window = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z])  # the normal CDF, per advertiser
        return p * in_window[advertiser]

    def hide_probability(self, user: np.ndarray, ad: np.ndarray, affinity: np.ndarray) -> np.ndarray:
        """P(hide | the impression is not clicked): annoying, low-quality, irrelevant ads get hidden."""
        logit = -4.0 + 0.9 * self.ad_annoyance[ad] - 0.5 * self.ad_quality[ad] - 0.8 * np.tanh(0.9 * affinity) + 0.3 * self.user_bias[user]
        return 1 / (1 + np.exp(-logit))

    def candidate_log(
        self, t: int, event_ids: np.ndarray, request: dict[str, np.ndarray], active: np.ndarray, auctioned: np.ndarray
    ) -> pa.Table:
        """Day t's candidate log: for a `candidate_log_rate` sample of requests (its own generator), every
        active ad with the final stage's inputs and the true probabilities (the intent term left out)."""
        c = self.config
        sampled = np.flatnonzero(np.random.default_rng([c.seed, 3, t]).random(len(event_ids)) < c.candidate_log_rate)
        parts = []
        per_chunk = max(1, 200_000 // max(len(active), 1))
        for start in range(0, len(sampled), per_chunk):
            rows = sampled[start : start + per_chunk]
            req = np.repeat(rows, len(active))
            ad = np.tile(active, len(rows))
            logit, affinity, topic = self.click_logit(
                request["user"][req], ad, request["surface"][req], request["hour"][req], request["watching"][req], request["position"][req]
            )
            in_auction = (auctioned[rows][:, :, None] == active[None, None, :]).any(axis=1).reshape(-1)
            parts.append(
                {
                    "event_id": event_ids[req].astype(np.int64),
                    "ts": request["ts"][req].astype(np.int64),
                    "user_id": request["user"][req].astype(np.int64),
                    "item_id": ad.astype(np.int64),
                    "advertiser_id": self.ad_advertiser[ad].astype(np.int64),
                    "ad_format": self.ad_format[ad].astype(np.int64),
                    "ad_category": topic.astype(np.int64),
                    "ad_age_days": (t - self.ad_start[ad]).astype(np.float32),
                    "bid": self.ad_bid[ad],
                    "auctioned": in_auction,
                    "won": ad == request["ad"][req],
                    "oracle_p_click": (1 / (1 + np.exp(-logit))).astype(np.float32),
                    "oracle_p_conversion": self.conversion_probability(ad, affinity).astype(np.float32),
                    "oracle_p_hide": self.hide_probability(request["user"][req], ad, affinity).astype(np.float32),
                }
            )
        if not parts:
            return pa.table({})
        return pa.table({name: np.concatenate([p[name] for p in parts]) for name in parts[0]})


    def past_impressions(self, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Each impression's count of the same user's impressions strictly before its timestamp: what a
        logging system can observe (the generator's activity rate itself is hidden). Advances the
        per-user count past this day."""
        day_ts = ts - ts.min()  # < 2 days of seconds, so it fits below the user in one int64 key
        key = user.astype(np.int64) << 20 | day_ts
        ordered = np.sort(key)
        earlier_today = np.searchsorted(ordered, key, "left") - np.searchsorted(ordered, key & ~((1 << 20) - 1), "left")
        counts = self.impressions_before_today[user] + earlier_today
        self.impressions_before_today += np.bincount(user, minlength=len(self.impressions_before_today))
        return counts

    def intent(self, user: np.ndarray, ad: np.ndarray, ts: np.ndarray, draw: np.ndarray, logit: np.ndarray) -> np.ndarray:
        """The short-term intent term of each impression, from the user's clicks strictly before it.

        Impressions are taken in rounds (round r holds each user's r-th impression of the day, in
        (ts, index) order, the order of event ids), so a click updates the user's memory before
        their next impression is scored; `draw` decides the clicks as `day` then does.
        """
        c = self.config
        term = np.zeros(len(user))
        order = np.lexsort((np.arange(len(user)), ts, user))
        starts = np.flatnonzero(np.r_[True, user[order][1:] != user[order][:-1]])
        rank = np.arange(len(user)) - np.repeat(starts, np.diff(np.r_[starts, len(user)]))
        weights = 0.5 ** (np.arange(c.intent_memory) / c.intent_halflife)
        weights /= weights.sum()
        for r in range(rank.max() + 1):
            rows = order[rank == r]
            memory = self.recent_clicks[user[rows]]
            pull = np.einsum("j,mj,mjk->mk", weights, memory >= 0, self.ad_topic[np.maximum(memory, 0)])
            term[rows] = c.intent_strength * np.tanh(np.einsum("mk,kl,ml->m", pull, self.transition, self.ad_topic[ad[rows]]))
            clicked = rows[draw[rows] < 1 / (1 + np.exp(-(logit[rows] + term[rows])))]
            who = user[clicked]
            self.recent_clicks[who] = np.concatenate([ad[clicked, None], self.recent_clicks[who, :-1]], axis=1)
        return term


def simulate_logs(config: SimulatorConfig, progress: bool = True) -> tuple[pa.Table, pa.Table | None]:
    """Draw the whole impression log (days in order; event ids increase with time) and, when
    `candidate_log_rate` > 0, the candidate log of its sampled requests (else None)."""
    from rich.progress import track

    world = AdsWorld(config)
    tables, candidates, next_id = [], [], 0
    days = range(config.days)
    for t in track(days, description="simulating days") if progress else days:
        table = world.day(t, next_id)
        next_id += table.num_rows
        tables.append(table)
        if world.candidates_today is not None and world.candidates_today.num_rows:
            candidates.append(world.candidates_today)
        world.drift()
    logged = pa.concat_tables(candidates) if candidates else None
    return pa.concat_tables(tables), logged


def simulate(config: SimulatorConfig, progress: bool = True) -> pa.Table:
    """Draw the whole impression log (days in order; event ids increase with time)."""
    return simulate_logs(config, progress)[0]


def simulate_to(config: SimulatorConfig, out: Path, progress: bool = True) -> Path:
    """Write the impression log to `out` and, when `candidate_log_rate` > 0, the candidate log to
    `out/candidates` (fxrec.data.candidates)."""
    events, candidates = simulate_logs(config, progress)
    write_events(events, dataset_spec(config), out, source="simulator")
    if config.candidate_log_rate > 0 and candidates is not None:
        from fxrec.data.candidates import CandidateSpec, write_candidates

        write_candidates(candidates, out, CandidateSpec(source="simulator", sample_rate=config.candidate_log_rate), "simulator")
    return out
