"""SOLARIS offline, on the log: how many requests each fallback tier covers, and what each coverage
level is worth to the VM in NE.

Replay: every event of the VM's surfaces on an evaluation day is a request for its (user, item) pair.
The server's pair predictor bets that a user's next requests repeat their recent candidates, and the
precompute runs right after each request, so at time ts the cache holds:

- pair tier: the pair, if the same (user, item) was requested in [ts - ttl, ts - delay]; its value is
  the FM's TAE of that earlier request (the published TAE of that event);
- user-aggregate tier: the mean TAE of the user's requests in that window, if any;
- similar-user tier: the mean of the previous day's aggregates of the k users nearest to this user by
  the user embedding the store held at ts (cosine);
- missing otherwise.

NE is then measured with the VM's own TAE input replaced per scenario: every event its own TAE (the
offline upper bound), none, the tiers cumulatively, and a sweep where a random share of events gets
its TAE -- the BCE-vs-coverage curve of the paper. The VM of day t is its snapshot trained through t-1;
a VM kept without daily snapshots is evaluated only on days after its last training day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fxrec.data.inputs import VectorInput
from fxrec.data.reader import iter_frames
from fxrec.metrics.ranking import ne
from fxrec.models.checkpoint import load as load_state
from fxrec.run import Run
from fxrec.serving.models import channel_names
from fxrec.transfer.published import PublishedFM
from fxrec.transfer.tae import TAEChannel

_TS_BITS = 34
TIERS = ("pair-cache", "user-aggregate", "similar-user", "missing")


@dataclass
class CoverageSettings:
    ttl_seconds: int = 4 * 3600  # the pair cache's TTL
    delay_seconds: int = (
        1  # precompute latency: a pair is usable this long after the request that predicted it
    )
    k: int = 10  # similar users
    days: int = 2  # evaluation days (the last ones)
    sweep: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    seed: int = 0
    task: str = "click"


@dataclass
class _Day:
    users: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    tae: np.ndarray  # (n, d) published TAE per event
    found: np.ndarray  # (n,) bool
    user_vectors: np.ndarray | None = None  # (n, d_u) store read as of each event
    user_found: np.ndarray | None = None
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _window_lookup(
    codes: np.ndarray, ts: np.ndarray, query_codes: np.ndarray, query_ts: np.ndarray, ttl: int, delay: int
):
    """For each query, the [start, end) range of earlier entries with the same code and ts in
    [query_ts - ttl, query_ts - delay], over entries sorted by (code, ts)."""
    ts0 = int(min(ts.min(initial=0), (query_ts - ttl).min(initial=0)))
    keys = (codes.astype(np.int64) << _TS_BITS) | (ts - ts0)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    low = (query_codes.astype(np.int64) << _TS_BITS) | np.maximum(query_ts - ttl - ts0, 0)
    high = (query_codes.astype(np.int64) << _TS_BITS) | (query_ts - delay - ts0)
    return order, np.searchsorted(keys, low, side="left"), np.searchsorted(keys, high, side="right")


def assign_tiers(
    previous: _Day | None, today: _Day, settings: CoverageSettings
) -> tuple[np.ndarray, np.ndarray]:
    """(tier index per event (0 pair .. 3 missing), the TAE the serving chain would feed (n, d))."""
    n, d = today.tae.shape
    days = [x for x in (previous, today) if x is not None]
    users = np.concatenate([x.users for x in days])
    items = np.concatenate([x.items for x in days])
    ts = np.concatenate([x.ts for x in days])
    tae = np.concatenate([x.tae for x in days])
    found = np.concatenate([x.found for x in days])
    users, items, ts, tae = users[found], items[found], ts[found], tae[found]  # only what the FM produced
    tier = np.full(n, 3, np.int64)
    value = np.zeros((n, d), np.float32)

    # pair tier: the latest same-(user, item) request in the window
    pairs, pair_code = np.unique(
        np.stack([np.concatenate([users, today.users]), np.concatenate([items, today.items])], 1),
        axis=0,
        return_inverse=True,
    )
    pair_code = pair_code.reshape(-1)
    order, start, end = _window_lookup(
        pair_code[: len(users)],
        ts,
        pair_code[len(users) :],
        today.ts,
        settings.ttl_seconds,
        settings.delay_seconds,
    )
    hit = end > start
    tier[hit] = 0
    value[hit] = tae[order[end[hit] - 1]]

    # user-aggregate tier: mean over the user's requests in the window
    _, user_code = np.unique(np.concatenate([users, today.users]), return_inverse=True)
    order, start, end = _window_lookup(
        user_code[: len(users)],
        ts,
        user_code[len(users) :],
        today.ts,
        settings.ttl_seconds,
        settings.delay_seconds,
    )
    sums = np.concatenate([np.zeros((1, d), np.float64), np.cumsum(tae[order], axis=0, dtype=np.float64)])
    count = end - start
    aggregate = (tier == 3) & (count > 0)
    tier[aggregate] = 1
    value[aggregate] = ((sums[end[aggregate]] - sums[start[aggregate]]) / count[aggregate, None]).astype(
        np.float32
    )

    # similar-user tier: neighbours by the user embedding read at ts, among yesterday's users
    if previous is not None and today.user_vectors is not None and previous.user_vectors is not None:
        rest = np.flatnonzero((tier == 3) & today.user_found)
        if len(rest):
            value[rest], ok = _similar(previous, today.users[rest], today.user_vectors[rest], settings.k)
            tier[rest[ok]] = 2
            value[rest[~ok]] = 0.0
    return tier, value


def _similar(previous: _Day, users: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    keep = previous.found & previous.user_found
    if not keep.any():
        return np.zeros((len(users), previous.tae.shape[1]), np.float32), np.zeros(len(users), bool)
    index_users, inverse = np.unique(previous.users[keep], return_inverse=True)
    counts = np.bincount(inverse)
    aggregates = np.zeros((len(index_users), previous.tae.shape[1]))
    np.add.at(aggregates, inverse, previous.tae[keep])
    aggregates /= counts[:, None]
    last = np.zeros(len(index_users), np.int64)
    last[inverse] = np.flatnonzero(keep)  # the later rows win: each user's newest embedding
    vectors = previous.user_vectors[last]
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    out = np.zeros((len(users), aggregates.shape[1]), np.float32)
    k = min(k, len(index_users) - 1)
    if k <= 0:
        return out, np.zeros(len(users), bool)
    for start in range(0, len(users), 2048):
        similarity = q[start : start + 2048] @ vectors.T
        similarity[index_users[None, :] == users[start : start + 2048, None]] = -np.inf  # not yourself
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        out[start : start + 2048] = aggregates[nearest].mean(axis=1)
    return out, np.ones(len(users), bool)


def solaris_report(run: Path, vm: str, settings: CoverageSettings | None = None) -> dict:
    """Coverage per tier and the VM's NE per scenario over the last `settings.days` days of the log."""
    settings = settings or CoverageSettings()
    run_dir = Run(run)
    loaded = run_dir.load_model(vm)
    if "tae" not in channel_names(loaded.config):
        raise ValueError(
            f"VM {vm!r} has no tae channel; SOLARIS coverage needs a VM that reads target-aware embeddings"
        )
    model = loaded.model
    log = run_dir.event_log()
    published = PublishedFM(run_dir.publish_dir(loaded.config.fm, loaded.config.fm_delay))
    features = [log.spec.feature(f) for f in model.features]
    eval_days = log.days[-settings.days :]
    model_dir = run_dir.model(vm)
    rng = np.random.default_rng(settings.seed)
    final = model_dir.trained_through()  # VMs without daily snapshots: only later days are fair
    evaluated: list[str] = []
    previous: _Day | None = None
    rows: dict[str, list[np.ndarray]] = {}
    tiers_all, labels_all = [], []
    for index, (day, frame) in enumerate(iter_frames(log, features, surfaces=loaded.config.surfaces)):
        view = published.view(frame)
        for channel in model.channels:
            channel.attach(frame, published)
        user_vectors, user_found, _ = (
            view.user_embeddings(1) if "user" in published.dims else (None, None, None)
        )
        today = _Day(
            frame.meta["user_id"].numpy(),
            frame.meta["item_id"].numpy(),
            frame.meta["ts"].numpy(),
            view.vectors("tae").numpy(),
            view.found.numpy(),
            None if user_vectors is None else user_vectors.numpy(),
            None if user_found is None else user_found.numpy(),
        )
        if day in eval_days and index > 0:
            snapshot = model_dir.snapshot(log.days[index - 1])
            if snapshot.exists():
                model.load_state_dict(load_state(snapshot))
                model.eval()
            elif final is None or day <= final:  # no snapshot: the final model has seen this day
                previous = today
                continue
            evaluated.append(day)
            tier, chain = assign_tiers(previous, today, settings)
            scenarios = _scenarios(today, tier, chain, settings.sweep, rng)
            for name, (vectors, found) in scenarios.items():
                rows.setdefault(name, []).append(_predict(model, frame, vectors, found, settings.task))
            tiers_all.append(tier)
            labels_all.append(frame.labels[settings.task].numpy())
        previous = today
    if not tiers_all:
        raise ValueError(f"no evaluation events for {vm!r} on days {eval_days}")
    tier = np.concatenate(tiers_all)
    labels = np.concatenate(labels_all)
    counts = np.bincount(tier, minlength=4) / len(tier)
    coverage = {name: float(counts[: i + 1].sum()) for i, name in enumerate(TIERS[:3])}
    results = {name: float(ne(labels, np.concatenate(parts))) for name, parts in rows.items()}
    base = results["no TAE (all missing)"]
    return {
        "vm": vm,
        "days": evaluated,
        "events": int(len(tier)),
        "settings": {k: v for k, v in settings.__dict__.items()},
        "tier_share": {name: float(counts[i]) for i, name in enumerate(TIERS)},
        "cumulative_coverage": coverage,
        "ne": results,
        "ne_change_pct_vs_none": {name: 100.0 * (value - base) / base for name, value in results.items()},
    }


def _scenarios(
    today: _Day, tier: np.ndarray, chain: np.ndarray, sweep: tuple[float, ...], rng
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    own, own_found = today.tae, today.found
    zeros = np.zeros_like(own)
    out = {
        "own TAE on every event (offline upper bound)": (own, own_found),
        "no TAE (all missing)": (zeros, np.zeros(len(own), bool)),
    }
    for last, name in (
        (0, "pair cache"),
        (1, "pair + user aggregate"),
        (2, "pair + aggregate + similar user"),
    ):
        use = tier <= last
        out[name] = (np.where(use[:, None], chain, 0.0), use)
    draw = rng.random(len(own))
    for share in sweep:
        use = own_found & (draw < share)
        out[f"sweep: {share:.0%} of events get their TAE"] = (np.where(use[:, None], own, 0.0), use)
    return out


@torch.no_grad()
def _predict(model, frame, vectors: np.ndarray, found: np.ndarray, task: str) -> np.ndarray:
    frame.inputs[TAEChannel.input_key] = VectorInput(
        torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)),
        torch.from_numpy(found.astype(np.float32)),
    )
    chunks = [torch.sigmoid(model(batch).logits[task]).numpy() for batch in frame.batches(4096)]
    return np.concatenate(chunks)
