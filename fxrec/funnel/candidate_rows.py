"""Candidate rows: each logged candidate as the request's impression row with the candidate's ad in it.

A stage after retrieval scores every candidate of a request on the features it would have had, had it
won the auction: everything about the user and the request (user features, the user's click
histories, surface, hour, position) comes from the request's impression row (`event_id`), exactly as
the impression log built it (histories from clicks strictly before the request, `fxrec.data.history`);
everything about the ad (`AD_COLUMNS`) comes from the candidate row. So the winner's candidate row
(`won`) is its impression row, feature for feature, and no candidate sees anything the impression
did not. Labels are the impression's outcome: only the winner's row keeps them (null elsewhere).

Both the final stage (`fxrec.funnel.final_stage`) and the early-stage ranker (`fxrec.funnel.esr`)
read candidates this way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fxrec.data.candidates import CandidateLog
from fxrec.data.eventlog import EventLog
from fxrec.data.labels import delay_column
from fxrec.data.reader import _take_jagged, iter_tables
from fxrec.data.schema import FeatureSpec
from fxrec.errors import InputError

# What a candidate row replaces in its request's impression row: the ad and what the ad brings.
AD_COLUMNS = ("item_id", "advertiser_id", "ad_format", "ad_category", "ad_age_days", "bid")
# The candidate log's columns every candidate row carries along (the request's and the stage's keys).
CANDIDATE_KEYS = ("auctioned", "won")

History = dict[str, tuple[np.ndarray, np.ndarray]]


def join_candidates(
    impressions: pa.Table, history: History | None, candidates: pa.Table, labels: list[str] = ()
) -> tuple[pa.Table, History | None]:
    """(candidate rows, their histories): row i is the impression row of candidates[i]'s `event_id`
    with the candidate's AD_COLUMNS (those the impressions hold), plus `auctioned` and `won`; `labels`
    (and their delay columns) are kept on the winner's row only."""
    event_ids = impressions.column("event_id").to_numpy()
    wanted = candidates.column("event_id").to_numpy()
    order = np.argsort(event_ids, kind="stable")
    position = np.minimum(np.searchsorted(event_ids[order], wanted), max(len(order) - 1, 0))
    found = event_ids[order][position] == wanted if len(order) else np.zeros(len(wanted), dtype=bool)
    if not found.all():
        missing = np.unique(wanted[~found])[:5]
        raise InputError(f"candidate rows: requests {missing.tolist()} have no impression row in the log")
    rows = order[position]
    table = impressions.take(pa.array(rows))
    won = candidates.column("won").combine_chunks() if "won" in candidates.column_names else None
    for name in AD_COLUMNS:
        if name in table.column_names:
            index = table.column_names.index(name)
            column = candidates.column(name).cast(table.schema.field(name).type)
            table = table.set_column(index, name, column)
    for name in [*labels, *(delay_column(label) for label in labels)]:
        if name in table.column_names and won is not None:
            index = table.column_names.index(name)
            kept = pc.if_else(
                won, table.column(name), pa.nulls(table.num_rows, table.schema.field(name).type)
            )
            table = table.set_column(index, name, kept)
    for name in CANDIDATE_KEYS:
        if name in candidates.column_names and name not in table.column_names:
            table = table.append_column(name, candidates.column(name))
    histories = {k: _take_jagged(o, v, rows) for k, (o, v) in history.items()} if history else None
    return table, histories


def iter_candidate_rows(
    log: EventLog,
    features: list[FeatureSpec],
    days: list[str],
    candidates: CandidateLog | None = None,
    meta: tuple[str, ...] = (),
) -> Iterator[tuple[str, pa.Table, History | None]]:
    """(day, candidate rows, histories) for each of `days` with logged candidates, in time order: the
    impression log is walked once (histories as `fxrec.data.reader.iter_tables` builds them)."""
    candidates = candidates if candidates is not None else CandidateLog(log.path)
    logged = [d for d in days if d in set(candidates.days)]
    if not logged:
        return
    columns = tuple(dict.fromkeys([*meta, *AD_COLUMNS]))
    for day, table, history in iter_tables(log, features, days=logged, meta=columns):
        day_candidates = candidates.read_day(day)
        if day_candidates.num_rows == 0:
            continue
        rows, histories = join_candidates(table, history, day_candidates, list(log.spec.tasks))
        yield day, rows, histories
