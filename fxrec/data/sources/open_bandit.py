"""The Open Bandit Dataset sample (ZOZOTOWN, CC BY 4.0) as an event log, read from the `obp` wheel.

The `obp` wheel ships a 10,000-impression sample per (policy, campaign) under
`obp/dataset/obd/<policy>/<campaign>/<campaign>.csv`, with the items' context in `item_context.csv`
next to it. Policies: "random" (uniform logging) and "bts" (Bernoulli Thompson sampling); campaigns:
"all", "men", "women". All six samples cover the same week (2019-11-24 .. 11-30). obp 0.4.1 is the
last release published as a wheel (later ones are sdists that need Python < 3.11); its sample data is
the one the later releases ship.

One sample holds about 40 clicks, so a chronological 80/10/10 split of it leaves a handful of test
positives; `import_open_bandit` can merge several samples into one log (all six: 60,000 impressions,
287 clicks).

Mapping to the event log:
  - `ts`: the datetime strings, in unix seconds; events are ordered by the full microsecond timestamp
    (then the sample's place in the import, then the file's row order) and `event_id` counts 0, 1, 2,
    ... in that order.
  - `user_id`: OBD has no user id. The pseudo user id is a stable hash (`ids.stable_hash`) of the
    four user features joined with "|", so it names a user *segment*, not a person (the "all"
    sample has about 240 of them).
  - `surface`: "zozotown-<campaign>"; `policy`: "random" or "bts", a plain column.
  - `item_id`: the campaigns' items are different items numbered from 0 each, so the items of each
    merged campaign after the first are shifted past the ones before it (`item_offsets`). The two
    policies of a campaign show the same items (same ids, same `item_feature_0`), but their
    `item_context.csv` files hash the categorical item features with different salts, so a campaign's
    item features come from one file: the first policy imported.
  - `position` (1..3), the user features and the categorical item features: sparse ids; string
    values are stably hashed to int64, with a collision-free table size where one exists.
  - `item_feature_0` (the one numeric item feature) and `user_item_affinity` (the user-item affinity
    column of the shown item): dense features.
  - `propensity`: the logging policy's propensity score, float32, a plain column (not a model feature)
    for off-policy estimators.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from fxrec.data.eventlog import EventLogError, write_events
from fxrec.data.schema import DatasetSpec, FeatureKind, FeatureSpec
from fxrec.data.sources.ids import dense_id_cardinality, hashed_cardinality, stable_hash
from fxrec.data.sources.wheels import fetch_wheel, read_member

OBP_VERSION = "0.4.1"
OBP_SHA256 = "87dec9caf4283c25ab13036532e0a24566f1c7bdcad1653a8ded43b2f5ef8208"
CAMPAIGNS = ("all", "men", "women")
POLICIES = ("random", "bts")
LOG_MEMBER = "obp/dataset/obd/{policy}/{campaign}/{campaign}.csv"
ITEM_MEMBER = "obp/dataset/obd/{policy}/{campaign}/item_context.csv"
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
ITEM_SPARSE = tuple(f"item_feature_{i}" for i in range(1, 4))
AFFINITY_PREFIX = "user-item_affinity_"
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S%.f%:z"


def surface_of(campaign: str) -> str:
    return f"zozotown-{campaign}"


def _require(frame: pl.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EventLogError(f"{where}: missing columns {missing}; found {frame.columns}")


def _hashed(frame: pl.DataFrame, column: str) -> pl.Series:
    return pl.Series(column, stable_hash(frame.get_column(column).to_arrow()))


def sample_rows(
    log: pl.DataFrame,
    item_context: pl.DataFrame,
    campaign: str,
    policy: str,
    where: str,
    item_offset: int = 0,
) -> pl.DataFrame:
    """One sample's impressions joined with item context, in file order, with the raw time in `_micros`."""
    _require(log, ["timestamp", "item_id", "position", "click", "propensity_score", *USER_FEATURES], where)
    _require(item_context, ["item_id", "item_feature_0", *ITEM_SPARSE], f"{where} item_context.csv")
    micros = log.get_column("timestamp").str.to_datetime(TIMESTAMP_FORMAT, strict=False).dt.epoch("us")
    if micros.null_count():
        bad = log.get_column("timestamp").filter(micros.is_null()).head(1).to_list()
        raise EventLogError(
            f"{where}: column 'timestamp' has values like {bad} that do not parse as {TIMESTAMP_FORMAT!r}"
        )
    item_ids = log.get_column("item_id").cast(pl.Int64).to_numpy()
    affinity_columns = [c for c in log.columns if c.startswith(AFFINITY_PREFIX)]
    affinity_columns.sort(key=lambda c: int(c.removeprefix(AFFINITY_PREFIX)))
    affinity = np.zeros(log.height, dtype=np.float32)
    if affinity_columns:
        matrix = log.select(affinity_columns).to_numpy().astype(np.float32)
        inside = item_ids < matrix.shape[1]
        affinity[inside] = matrix[np.flatnonzero(inside), item_ids[inside]]
    user_key = pl.concat_str([pl.col(c).fill_null("") for c in USER_FEATURES], separator="|")
    items = item_context.select(
        pl.col("item_id").cast(pl.Int64),
        pl.col("item_feature_0").cast(pl.Float32),
        *[
            pl.Series(c, stable_hash(item_context.get_column(c).cast(pl.String).to_arrow()))
            for c in ITEM_SPARSE
        ],
    )
    return (
        log.select(
            micros.alias("_micros"),
            pl.col("item_id").cast(pl.Int64),
            pl.col("position").cast(pl.Int64),
            pl.col("click").cast(pl.Float32),
            pl.col("propensity_score").cast(pl.Float32).alias("propensity"),
            pl.Series("user_item_affinity", affinity),
            pl.Series("user_id", stable_hash(log.select(user_key).to_series().to_arrow())),
            *[_hashed(log, c) for c in USER_FEATURES],
        )
        .with_row_index("_row")
        .join(items, on="item_id", how="left", maintain_order="left")
        .with_columns(
            pl.col("item_id") + item_offset,
            pl.lit(surface_of(campaign)).alias("surface"),
            pl.lit(policy).alias("policy"),
        )
    )


def open_bandit_events(samples: list[pl.DataFrame]) -> pa.Table:
    """Samples' rows (`sample_rows`) merged into event-log rows in timestamp order."""
    events = (
        pl.concat([rows.with_columns(pl.lit(k, pl.Int64).alias("_sample")) for k, rows in enumerate(samples)])
        .sort(["_micros", "_sample", "_row"])
        .with_row_index("event_id")
        .with_columns(pl.col("event_id").cast(pl.Int64), (pl.col("_micros") // 1_000_000).alias("ts"))
        .drop("_micros", "_row", "_sample")
    )
    core = ["event_id", "ts", "user_id", "item_id", "surface", "click", "propensity"]
    return events.select(core + [c for c in events.columns if c not in core]).to_arrow()


def item_offsets(item_contexts: dict[str, pl.DataFrame]) -> dict[str, int]:
    """Each campaign's item-id shift: the campaigns before it (in the given order) keep their ids apart."""
    offsets, total = {}, 0
    for campaign, context in item_contexts.items():
        offsets[campaign] = total
        total += int(context.get_column("item_id").max()) + 1
    return offsets


def open_bandit_spec(events: pa.Table, campaigns: list[str]) -> DatasetSpec:
    """Features of an OBD log; hashed features get a table size that keeps their values apart."""

    def ids(name: str) -> np.ndarray:
        return events.column(name).fill_null(0).to_numpy()

    sparse, dense = FeatureKind.sparse, FeatureKind.dense
    return DatasetSpec(
        name="open-bandit-" + "-".join(campaigns),
        features=[
            FeatureSpec(
                name="user_id", kind=sparse, cardinality=hashed_cardinality(ids("user_id")), vm=False
            ),
            FeatureSpec(name="item_id", kind=sparse, cardinality=dense_id_cardinality(ids("item_id"))),
            FeatureSpec(name="position", kind=sparse, cardinality=dense_id_cardinality(ids("position"))),
            *[
                FeatureSpec(name=c, kind=sparse, cardinality=hashed_cardinality(ids(c)))
                for c in USER_FEATURES
            ],
            *[FeatureSpec(name=c, kind=sparse, cardinality=hashed_cardinality(ids(c))) for c in ITEM_SPARSE],
            FeatureSpec(name="item_feature_0", kind=dense),
            FeatureSpec(name="user_item_affinity", kind=dense),
            FeatureSpec(
                name="hist_item_id", kind=FeatureKind.sequence, source="item_id", table="item_id", vm=False
            ),
        ],
        tasks=["click"],
        surfaces=[surface_of(c) for c in campaigns],
        history_length=20,
    )


def import_open_bandit(
    out: Path,
    cache_dir: Path | None = None,
    campaigns: Sequence[str] = ("all",),
    policies: Sequence[str] = ("random",),
) -> Path:
    """Write the OBD samples `policies` x `campaigns` as one event log at `out`."""
    campaigns, policies = list(dict.fromkeys(campaigns)), list(dict.fromkeys(policies))
    for name, values, allowed in (("campaign", campaigns, CAMPAIGNS), ("policy", policies, POLICIES)):
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise ValueError(f"each {name} must be one of {allowed}, got {values}")
    wheel = fetch_wheel("obp", OBP_VERSION, cache_dir, sha256=OBP_SHA256)
    item_contexts = {
        c: pl.read_csv(
            io.BytesIO(read_member(wheel, ITEM_MEMBER.format(policy=policies[0], campaign=c))),
            schema_overrides=dict.fromkeys(ITEM_SPARSE, pl.String),
        )
        for c in campaigns
    }
    offsets = item_offsets(item_contexts)
    samples, sources = [], []
    for campaign in campaigns:
        for policy in policies:
            member = LOG_MEMBER.format(policy=policy, campaign=campaign)
            log = pl.read_csv(
                io.BytesIO(read_member(wheel, member)),
                schema_overrides=dict.fromkeys(USER_FEATURES, pl.String),
            )
            where = f"{wheel.name}:{member}"
            samples.append(
                sample_rows(log, item_contexts[campaign], campaign, policy, where, offsets[campaign])
            )
            sources.append(where)
    events = open_bandit_events(samples)
    return write_events(events, open_bandit_spec(events, campaigns), Path(out), source=", ".join(sources))
