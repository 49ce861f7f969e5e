"""Calibrating a reach sample's weights to the exact census of one-way margins (raking).

A stratified sample's design weight N_h / n_h makes each stratum's rows add up to its N_h; nothing
makes them add up to the users of each country, age band, device or interest segment, which fxrec
counts exactly in pass 1 (fxrec.audience.margins). Raking (iterative proportional fitting, the
classic survey calibration) scales the weights, one partition of the rows after another, until the
weighted sample reproduces every kept margin and, last, every stratum's N_h again: w_i = d_i g_i. Any
query correlated with those margins (an interest within an age band, a small country and a device)
gets a smaller variance; a query the strata decide stays exact (the estimator counts it from the
census), and an undecided stratum's weights still add up to its N_h.

Calibration runs once at build time; the weight is stored with the row (4 bytes, counted), so the
sums the estimator reads stay additive over any split of the rows (fxrec.audience.statistics).

A margin cell needs `min_rows` sample rows to be calibrated to: rarer values of a categorical field
are pooled into one cell with the commonest (their total is still exact), a rarer segment is left
out. Strata the budget left unsampled have users in the margins but no rows: their share of each
margin (raked synthetic rates, fxrec.audience.margins.leaf_rates) is taken off the targets.
"""

from __future__ import annotations

import numpy as np

from fxrec.audience.margins import Margins, leaf_rates, unpack_segments
from fxrec.audience.schema import Columns
from fxrec.audience.strata import AGE_BANDS

MIN_ROWS = 10  # sample rows a margin cell needs to be calibrated to


def margin_partitions(
    margins: Margins,
    rows: Columns,
    users: np.ndarray,
    taken: np.ndarray,
    coordinates: np.ndarray,
    min_rows: int = MIN_ROWS,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The margins the rows are raked to, each as (label per row, target per label): every categorical
    field (rare values pooled), age bands, each segment with enough rows on both sides."""
    missing = (taken == 0) & (users > 0)

    def target(counts: np.ndarray) -> float:
        total = float(counts[0])
        if missing.any():  # the unsampled strata's expected share of the margin
            total -= float((users * leaf_rates(margins, counts, coordinates, users))[missing].sum())
        return total

    found = []
    for family, table in margins.tables.items():
        kind, name = family
        if kind == "categorical":
            values = rows.categorical[name].astype(np.int64)
            found += _partition(
                values, [target(table[:, [v]].sum(1)) for v in range(table.shape[1])], min_rows
            )
        elif kind == "numeric" and name == "age":
            low = margins.lows[name]
            ages = rows.numeric[name].astype(np.int64)
            band = np.searchsorted(np.array([high for _, high in AGE_BANDS]), ages).clip(
                max=len(AGE_BANDS) - 1
            )
            targets = [target(table[:, max(a - low, 0) : max(b - low + 1, 0)].sum(1)) for a, b in AGE_BANDS]
            found += _partition(band, targets, min_rows)
        elif kind == "segment":
            flags = unpack_segments(rows.segments[name], table.shape[1])
            everyone = target(margins.everyone())
            for k in range(table.shape[1]):
                holds = flags[:, k].astype(np.int64)
                inside = int(holds.sum())
                if inside >= min_rows and len(holds) - inside >= min_rows:
                    t = target(table[:, k])
                    found.append((holds, np.array([everyone - t, t])))
    return found


def _partition(
    values: np.ndarray, targets: list[float], min_rows: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One categorical margin: values with fewer than `min_rows` rows pooled with the commonest."""
    targets_ = np.array(targets, dtype=np.float64)
    rows = np.bincount(values, minlength=len(targets_))
    label = np.arange(len(targets_))
    commonest = int(np.argmax(rows))
    label[rows < min_rows] = commonest
    _, label = np.unique(label, return_inverse=True)
    pooled = np.bincount(label, weights=targets_)
    if len(pooled) < 2:
        return []
    return [(label[values], pooled)]


def rake(
    design: np.ndarray,
    row_stratum: np.ndarray,
    users: np.ndarray,
    partitions: list[tuple[np.ndarray, np.ndarray]],
    tolerance: float = 1e-7,  # the weights are stored as float32
    sweeps: int = 1000,
) -> np.ndarray:
    """Weights w = design * g whose sums reproduce every partition's targets and, exactly (applied
    last), each stratum's users: iterative proportional fitting until the largest relative miss of any
    margin is below `tolerance` (or `sweeps` passes)."""
    weights = design.astype(np.float64).copy()
    strata = (row_stratum.astype(np.int64), users.astype(np.float64))
    groups = [*partitions, strata]
    for _ in range(sweeps):
        worst = 0.0
        for labels, targets in groups:
            have = np.bincount(labels, weights=weights, minlength=len(targets))
            ok = have > 0
            scale = np.where(ok, targets / np.where(ok, have, 1.0), 1.0)
            miss = np.abs(have - targets)[ok] / np.maximum(targets[ok], 1.0)
            worst = max(worst, float(miss.max(initial=0.0)))
            weights *= scale[labels]
        if worst < tolerance:
            break
    return weights


def calibrated_weights(
    margins: Margins,
    rows: Columns,
    row_stratum: np.ndarray,
    users: np.ndarray,
    taken: np.ndarray,
    coordinates: np.ndarray,
    min_rows: int = MIN_ROWS,
) -> np.ndarray:
    """Each sample row's calibrated weight (float32, as stored): raked to the census's one-way margins
    and each sampled stratum's N_h."""
    design = (users / np.maximum(taken, 1))[row_stratum]
    partitions = margin_partitions(margins, rows, users, taken, coordinates, min_rows)
    return rake(design, row_stratum, users, partitions).astype(np.float32)


__all__ = ["MIN_ROWS", "calibrated_weights", "margin_partitions", "rake"]
