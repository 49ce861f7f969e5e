"""Sampled non-clicks for a clicks-only log: a simulation of the exposures the log did not record.

Reviews, purchases and ratings logs hold only what users chose; a click model needs what they were
shown and passed over. `add_negatives` adds `per_positive` sampled items next to every logged event,
at the same time, for the same user and context, with every label 0. Where the items come from:

- `same_hour_pool`: the items of events logged in the hour up to and including this event, each as
  often as it was logged there (popular items are shown more, as in a real feed);
- `catalogue`: every item first logged at or before this event, uniformly (the whole shelf).

Both pools hold only the past, so a negative never names an item before the log has seen it. A
negative takes its item's columns (`item_id`, `advertiser_id` when present, and `item_columns`) from
the logged row it was drawn from; a draw of the event's own item is dropped. Event ids are renumbered
after sampling. This models exposure; it does not observe it: label rates, NE and calibration then
describe the sampled world, and the import says so.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from fxrec.data.eventlog import EventLogError

HOUR_S = 3600


class NegativeSampling(BaseModel):
    """The `negatives:` block of a table import spec."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    per_positive: int = Field(default=4, ge=1)
    pool: Literal["same_hour_pool", "catalogue"] = Field(default="same_hour_pool", alias="from")
    item_columns: list[str] = []
    seed: int = 0


def add_negatives(events: pl.DataFrame, config: NegativeSampling, tasks: list[str], where: str) -> pl.DataFrame:
    """`events` (every row a logged positive) plus `per_positive` sampled negatives per row, in ts order."""
    if events["click"].min() < 1:
        raise EventLogError(
            f"{where}: negatives: the log already has non-clicks (click = 0); sampled negatives are for "
            "clicks-only logs"
        )
    item_side = ["item_id"] + [c for c in ("advertiser_id",) if c in events.columns] + config.item_columns
    missing = sorted(set(item_side) - set(events.columns))
    if missing:
        raise EventLogError(f"{where}: negatives: item_columns {missing} are not columns of the log {events.columns}")
    events = events.drop("event_id", strict=False).sort("ts", maintain_order=True)
    ts = events["ts"].to_numpy()
    draws = np.random.default_rng(config.seed).random((events.height, config.per_positive))
    if config.pool == "same_hour_pool":
        first = np.searchsorted(ts, ts - HOUR_S, side="left")  # events within the last hour...
        last = np.searchsorted(ts, ts, side="right")  # ...up to and including this timestamp
        source = first[:, None] + (draws * (last - first)[:, None]).astype(np.int64)
    else:
        items = events["item_id"].to_numpy()
        _, first_row = np.unique(items, return_index=True)
        first_row = np.sort(first_row)  # each item's first logged row, in time order
        known = np.searchsorted(ts[first_row], ts, side="right")  # items first logged at or before ts
        source = first_row[(draws * known[:, None]).astype(np.int64)]
    positive = np.repeat(np.arange(events.height), config.per_positive)
    source = source.reshape(-1)
    keep = events["item_id"].to_numpy()[source] != events["item_id"].to_numpy()[positive]
    positive, source = positive[keep], source[keep]
    negatives = events[positive].with_columns(events[source].select(item_side))
    labels = [t for t in tasks if t in events.columns]
    negatives = negatives.with_columns([pl.lit(0.0, dtype=events[t].dtype).alias(t) for t in labels])
    if "conversion_delay_s" in negatives.columns:
        negatives = negatives.with_columns(pl.lit(None, dtype=events["conversion_delay_s"].dtype).alias("conversion_delay_s"))
    return pl.concat([events, negatives]).sort("ts", maintain_order=True)
