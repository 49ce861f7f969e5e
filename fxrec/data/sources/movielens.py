"""MovieLens-100K as an event log, read from the `recbole` wheel on PyPI.

RecBole ships ML-100K as "atomic files" (tab-separated, headers like `user_id:token`) under
`recbole/dataset_example/ml-100k/` in its wheel: `ml-100k.inter` (user_id, item_id, rating, timestamp),
`ml-100k.user` (age, gender, occupation, zip_code) and `ml-100k.item` (title, release_year, class =
space-separated genres). One rating is one impression on the single surface "movielens"; a rating of
4 or 5 is a click. Events are totally ordered by (timestamp, user_id, item_id) and `event_id` counts
0, 1, 2, ... in that order, so a chronological split is a split on `event_id`
(see `movielens_split_points`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from fxrec.data.eventlog import EventLog, EventLogError, write_events
from fxrec.data.schema import DatasetSpec, FeatureKind, FeatureSpec
from fxrec.data.sources.ids import dense_id_cardinality
from fxrec.data.sources.wheels import fetch_wheel, read_member

RECBOLE_VERSION = "1.2.1"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{kind}"
SURFACE = "movielens"
CLICK_RATING = 4  # ratings >= 4 count as clicks

# Genre ids follow the column order of the original u.genre file.
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# Occupation ids are 1 + the index in the original u.occupation file; 0 is anything else.
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive", "healthcare",
    "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer", "retired", "salesman",
    "scientist", "student", "technician", "writer",
)  # fmt: skip
# Age buckets as in MovieLens-1M: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+ -> ids 1..7.
AGE_BOUNDS = (18, 25, 35, 45, 50, 56)
GENDERS = {"M": 1, "F": 2}
NON_US_ZIP = 100  # zip prefix id for postal codes that do not start with two digits (Canada)


def read_atomic_file(wheel: Path, kind: str) -> pl.DataFrame:
    """One RecBole atomic file (`inter`, `user` or `item`) as strings, headers stripped of `:type`."""
    member = MEMBER.format(kind=kind)
    frame = pl.read_csv(
        io.BytesIO(read_member(wheel, member)), separator="\t", quote_char=None, infer_schema=False
    )
    return frame.rename({name: name.split(":")[0] for name in frame.columns})


def _int_column(frame: pl.DataFrame, name: str, where: str) -> pl.Expr:
    if name not in frame.columns:
        raise EventLogError(f"{where}: missing column {name!r} (expected integers); found {frame.columns}")
    return pl.col(name).cast(pl.Float64).cast(pl.Int64)


def user_features(users: pl.DataFrame, where: str = "ml-100k.user") -> pl.DataFrame:
    """user_id -> age_bucket, gender, occupation, zip_prefix (all int64 ids)."""
    age = _int_column(users, "age", where)
    return users.select(
        _int_column(users, "user_id", where).alias("user_id"),
        (pl.sum_horizontal([(age >= bound).cast(pl.Int64) for bound in AGE_BOUNDS]) + 1).alias("age_bucket"),
        pl.col("gender").replace_strict(GENDERS, default=0, return_dtype=pl.Int64).alias("gender"),
        pl.col("occupation")
        .replace_strict({o: i + 1 for i, o in enumerate(OCCUPATIONS)}, default=0, return_dtype=pl.Int64)
        .alias("occupation"),
        pl.col("zip_code")
        .str.slice(0, 2)
        .cast(pl.Int64, strict=False)
        .fill_null(NON_US_ZIP)
        .alias("zip_prefix"),
    )


def item_features(items: pl.DataFrame, where: str = "ml-100k.item") -> pl.DataFrame:
    """item_id -> genres (list of genre ids, unknown names dropped)."""
    genre_ids = {g: i for i, g in enumerate(GENRES)}
    return items.select(
        _int_column(items, "item_id", where).alias("item_id"),
        pl.col("class")
        .fill_null("")
        .str.split(" ")
        .list.eval(pl.element().replace_strict(genre_ids, default=None, return_dtype=pl.Int64).drop_nulls())
        .alias("genres"),
    )


def movielens_events(inter: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame) -> pa.Table:
    """Ratings joined with user and item features, in (timestamp, user_id, item_id) order."""
    where = "ml-100k.inter"
    ratings = inter.select(
        _int_column(inter, "user_id", where).alias("user_id"),
        _int_column(inter, "item_id", where).alias("item_id"),
        pl.col("rating").cast(pl.Float32).alias("label_rating"),
        _int_column(inter, "timestamp", where).alias("ts"),
    )
    events = (
        ratings.sort(["ts", "user_id", "item_id"])
        .with_row_index("event_id")
        .with_columns(
            pl.col("event_id").cast(pl.Int64),
            pl.lit(SURFACE).alias("surface"),
            (pl.col("label_rating") >= CLICK_RATING).cast(pl.Float32).alias("click"),
        )
        .join(user_features(users), on="user_id", how="left", maintain_order="left")
        .join(item_features(items), on="item_id", how="left", maintain_order="left")
        .with_columns(pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.Int64))))
    )
    core = ["event_id", "ts", "user_id", "item_id", "surface", "click", "label_rating"]
    return events.select(core + [c for c in events.columns if c not in core]).to_arrow()


def movielens_spec(events: pa.Table) -> DatasetSpec:
    """Features of the MovieLens log; id cardinalities come from the largest id seen."""

    def largest(name: str) -> np.ndarray:
        return np.asarray([pc.max(events.column(name)).as_py() or 0])

    sparse = FeatureKind.sparse
    return DatasetSpec(
        name="movielens-100k",
        features=[
            FeatureSpec(
                name="user_id", kind=sparse, cardinality=dense_id_cardinality(largest("user_id")), vm=False
            ),
            FeatureSpec(name="item_id", kind=sparse, cardinality=dense_id_cardinality(largest("item_id"))),
            FeatureSpec(name="age_bucket", kind=sparse, cardinality=len(AGE_BOUNDS) + 3),
            FeatureSpec(name="gender", kind=sparse, cardinality=len(GENDERS) + 2),
            FeatureSpec(name="occupation", kind=sparse, cardinality=len(OCCUPATIONS) + 2),
            FeatureSpec(name="zip_prefix", kind=sparse, cardinality=NON_US_ZIP + 2),
            FeatureSpec(name="genres", kind=FeatureKind.multi, cardinality=len(GENRES) + 1),
            FeatureSpec(
                name="hist_item_id", kind=FeatureKind.sequence, source="item_id", table="item_id", vm=False
            ),
        ],
        tasks=["click"],
        surfaces=[SURFACE],
        history_length=20,
    )


def import_movielens_100k(out: Path, cache_dir: Path | None = None) -> Path:
    """Write MovieLens-100K as an event log at `out` (fetching the pinned recbole wheel if needed)."""
    wheel = fetch_wheel("recbole", RECBOLE_VERSION, cache_dir, sha256=RECBOLE_SHA256)
    events = movielens_events(
        read_atomic_file(wheel, "inter"), read_atomic_file(wheel, "user"), read_atomic_file(wheel, "item")
    )
    return write_events(events, movielens_spec(events), Path(out), source=f"{wheel.name}:ml-100k")


def split_points(
    event_ids: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[int, int]:
    """(train_end, valid_end) event ids cutting time-ordered ids into the given fractions.

    train: event_id < train_end; valid: train_end <= event_id < valid_end; test: event_id >= valid_end.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    ordered = np.sort(np.asarray(event_ids, dtype=np.int64))
    n = len(ordered)
    if n == 0:
        raise ValueError("no events to split")
    cuts = [int(np.floor(n * fractions[0])), int(np.floor(n * (fractions[0] + fractions[1])))]
    # An end past the last event is one more than the largest id, so every event falls in a split.
    return tuple(int(ordered[c]) if c < n else int(ordered[-1]) + 1 for c in cuts)  # type: ignore[return-value]


def movielens_split_points(
    log: EventLog, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[int, int]:
    """The standard chronological split of an imported MovieLens log: (train_end, valid_end) event ids.

    The first 80% of events (in the importer's (timestamp, user_id, item_id) order) train, the next
    10% validate, the last 10% test: `event_id < train_end`, `train_end <= event_id < valid_end`,
    `event_id >= valid_end`. Benchmarks filter on these ids.
    """
    return split_points(log.read_all(["event_id"]).column("event_id").to_numpy(), fractions)
