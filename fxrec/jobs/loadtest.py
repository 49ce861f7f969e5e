"""`fxrec loadtest`: an async load generator on loopback, three server configurations side by side.

Requests are replayed from the run's log: a user of the VM's surface (drawn in proportion to their
traffic, so heavy users come back, as they do in production), the context of one of their events,
and candidates drawn from a per-user pool (their recent items plus popular ones), so a user's next
request overlaps their last -- what SOLARIS's pair predictor bets on.

The generator is open loop by default: requests start on a fixed schedule (`rate` per second) up to
`concurrency` in flight, whatever the server's speed, so a slow server shows up as latency rather
than as fewer requests. Every configuration runs in its own child process with its own fresh copy
of the stores, on the same request sequence, in interleaved turns (see `compare_modes`).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import polars as pl

from fxrec.run import Run
from fxrec.serving.catalog import FeatureCatalog
from fxrec.serving.server import ServerProcess
from fxrec.serving.service import ServingConfig

MODE_LABELS = {"vm": "(a) VM only", "async": "(b) VM + SOAP async refresh", "inline": "(c) VM + FM inline"}


@dataclass
class LoadSettings:
    requests: int = 2000  # at most this many measured requests per configuration
    seconds: float = 20.0  # and at most this long
    rate: float = 100.0  # offered requests per second; 0 = closed loop
    concurrency: int = 16
    candidates: int = 100
    warmup: int = 100
    users: int = 500  # distinct users the requests are drawn from
    rounds: int = 5  # interleaved turns per configuration
    pause: float = 0.5  # seconds between turns (the async queue drains)
    seed: int = 0


# -- requests ---------------------------------------------------------------------------------------
def sample_payloads(
    run: Path,
    vm: str,
    count: int,
    candidates: int,
    users: int = 500,
    seed: int = 0,
    catalog: FeatureCatalog | None = None,
) -> list[dict]:
    """`count` score requests replayed from the log (see module docstring)."""
    rng = np.random.default_rng(seed)
    run_dir = Run(run)
    log = run_dir.event_log()
    catalog = catalog or FeatureCatalog.from_log(log)
    model = run_dir.load_model(vm)
    surface = (model.config.surfaces or log.spec.surfaces)[0]
    context_features = catalog.surface_context[surface]
    last = pl.from_arrow(log.read_day(log.days[-1])).filter(pl.col("surface") == surface)
    known_items = catalog.items.column("item_id").to_numpy()
    popular = (
        last.group_by("item_id").len().sort("len", descending=True)["item_id"].to_numpy()[: 4 * candidates]
    )
    popular = popular[np.isin(popular, known_items)]
    counts = last.group_by("user_id").len()
    counts = counts.filter(pl.col("user_id").is_in(catalog.user_ids().tolist()))
    chosen = counts.sample(n=min(users, counts.height), seed=seed)
    weights = chosen["len"].to_numpy().astype(float)
    chosen_users = chosen["user_id"].to_numpy()
    events = {
        u: rows
        for (u,), rows in last.filter(pl.col("user_id").is_in(chosen_users.tolist())).group_by("user_id")
    }
    pools: dict[int, np.ndarray] = {}
    payloads = []
    for user in rng.choice(chosen_users, size=count, p=weights / weights.sum()):
        user = int(user)
        rows = events[user]
        event = rows.row(int(rng.integers(rows.height)), named=True)
        if user not in pools:
            own = rows["item_id"].unique().to_numpy()
            extra = rng.choice(popular, size=min(len(popular), candidates + candidates // 2), replace=False)
            pools[user] = np.unique(np.concatenate([own, extra]))
        pool = pools[user]
        items = rng.choice(pool, size=min(candidates, len(pool)), replace=False)
        payloads.append(
            {
                "user_id": user,
                "surface": surface,
                "context": {f: _json_value(event[f]) for f in context_features},
                "candidates": [{"item_id": int(i)} for i in items],
            }
        )
    return payloads


def _json_value(value: object) -> object:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# -- the generator ----------------------------------------------------------------------------------
async def drive(
    url: str, payloads: list[dict], rate: float, concurrency: int, seconds: float, raw: bool = False
) -> dict:
    """Send `payloads` (open loop at `rate`, or closed loop when rate == 0); latency per request.
    Returns the summary, or with `raw` the latencies, statuses and sources to merge several runs."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    sources: dict[str, dict[str, int]] = {}
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    deadline = started + seconds

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:

        async def one(payload: dict) -> None:
            try:
                sent = time.perf_counter()
                response = await client.post("/v1/score", json=payload)
                latencies.append(time.perf_counter() - sent)
                key = str(response.status_code)
                if response.status_code == 200:
                    for feature, counts in response.json().get("sources", {}).items():
                        for source, n in counts.items():
                            sources.setdefault(feature, {}).setdefault(source, 0)
                            sources[feature][source] += n
            except httpx.HTTPError as error:
                key = type(error).__name__
            finally:
                slots.release()
            statuses[key] = statuses.get(key, 0) + 1

        tasks = []
        for i, payload in enumerate(payloads):
            if rate > 0:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if time.perf_counter() > deadline:
                break
            await slots.acquire()
            tasks.append(asyncio.create_task(one(payload)))
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    if raw:
        return {"latencies": latencies, "statuses": statuses, "sources": sources, "elapsed": elapsed}
    return summarize(latencies, statuses, elapsed, sources)


def summarize(
    latencies: list[float], statuses: dict[str, int], elapsed: float, sources: dict | None = None
) -> dict:
    ms = np.array(latencies) * 1e3 if latencies else np.zeros(1)
    total = sum(statuses.values())
    errors = total - statuses.get("200", 0)
    server_errors = sum(n for k, n in statuses.items() if k.startswith("5"))
    return {
        "requests": total,
        "qps": total / elapsed if elapsed > 0 else 0.0,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "errors": errors,
        "server_errors": server_errors,
        "statuses": statuses,
        "sources": sources or {},
    }


def scrape(
    url: str,
    prefixes: tuple[str, ...] = (
        "fxrec_refresh_total",
        "fxrec_pair_precompute_total",
        "fxrec_feature_source_total",
    ),
) -> dict[str, float]:
    """The server's counters that describe its background work, from /metrics."""
    text = httpx.get(url + "/metrics", timeout=5.0).text
    out = {}
    for line in text.splitlines():
        if line.startswith(prefixes):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def latency_histogram(url: str) -> dict[float, float]:
    """The server's own request-latency histogram (upper bound in seconds -> cumulative count)."""
    text = httpx.get(url + "/metrics", timeout=5.0).text
    out = {}
    for line in text.splitlines():
        if line.startswith("fxrec_request_latency_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            out[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_quantiles(
    before: dict[float, float], after: dict[float, float], quantiles=(0.5, 0.95, 0.99)
) -> dict[str, float]:
    """Quantiles (ms) of the requests observed between two histogram scrapes, interpolated within
    buckets: the latency inside the server, without the client's or the network's share."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    out = {}
    for q in quantiles:
        name = f"server_p{round(q * 100)}_ms"
        if total <= 0:
            out[name] = float("nan")
            continue
        target, lower, below = q * total, 0.0, 0.0
        for bound, cumulative in zip(bounds, counts, strict=True):
            if cumulative >= target:
                upper = bound if bound != float("inf") else lower * 2
                share = (target - below) / max(cumulative - below, 1e-9)
                out[name] = 1e3 * (lower + share * (upper - lower))
                break
            lower, below = bound, cumulative
    return out


# -- side by side -----------------------------------------------------------------------------------
def _server(run: Path, vm: str, mode: str, store_dir: Path, extra: dict | None) -> ServerProcess:
    store, cache = f"lmdb://{store_dir / 'store'}", f"lmdb://{store_dir / 'solaris'}"
    return ServerProcess(run, vm, ServingConfig(mode=mode, store=store, cache=cache, **(extra or {})))


def compare_modes(
    run: Path, vm: str, modes: list[str], settings: LoadSettings, extra: dict | None = None
) -> dict:
    """Every configuration on the same requests, interleaved: all servers start (each on its own copy
    of the published stores), then `rounds` rounds give each configuration its share of the requests
    in turn, the order rotating per round. Interleaving spreads any drift of this shared machine's load
    evenly over the configurations; only one server is under load at a time, and a short pause after
    each turn lets the async configuration drain its queue before another is measured. Each row holds
    its quantiles over all its requests and per round (`rounds`); the ratios are per round
    (`round_ratios`)."""
    run = Path(run)
    total = settings.warmup + settings.requests
    payloads = sample_payloads(run, vm, total, settings.candidates, settings.users, settings.seed)
    warm, measured = payloads[: settings.warmup], payloads[settings.warmup :]
    rounds = max(1, min(settings.rounds, len(measured)))
    share = len(measured) // rounds
    per_turn_seconds = settings.seconds / rounds
    parts: dict[str, list[dict]] = {m: [] for m in modes}
    background: dict[str, dict] = {}
    histograms: dict[str, dict[float, float]] = {}
    inside: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fxrec-loadtest-") as tmp:
        run_dir = Run(run)
        published = run_dir.user_store(run_dir.config.fm.name)
        servers: dict[str, ServerProcess] = {}
        try:
            for mode in modes:
                store_dir = Path(tmp) / mode
                store_dir.mkdir()
                if published.exists():  # every configuration starts from the published embeddings
                    shutil.copytree(published, store_dir / "store")
                servers[mode] = _server(run, vm, mode, store_dir, extra).start()
                asyncio.run(
                    drive(
                        servers[mode].url, warm, rate=0, concurrency=min(4, settings.concurrency), seconds=60
                    )
                )
                histograms[mode] = latency_histogram(servers[mode].url)  # measured requests only, below
            for r in range(rounds):
                chunk = measured[r * share : (r + 1) * share]
                for k in range(len(modes)):
                    mode = modes[(r + k) % len(modes)]
                    time.sleep(settings.pause)
                    before = latency_histogram(servers[mode].url)
                    part = asyncio.run(
                        drive(
                            servers[mode].url,
                            chunk,
                            settings.rate,
                            settings.concurrency,
                            per_turn_seconds,
                            raw=True,
                        )
                    )
                    part["inside"] = histogram_quantiles(before, latency_histogram(servers[mode].url))
                    parts[mode].append(part)
            for mode, server in servers.items():
                background[mode] = scrape(server.url)
                inside[mode] = histogram_quantiles(histograms[mode], latency_histogram(server.url))
        finally:
            for server in servers.values():
                server.stop()
    rows = []
    for mode in modes:
        latencies = [x for part in parts[mode] for x in part["latencies"]]
        statuses: dict[str, int] = {}
        sources: dict[str, dict[str, int]] = {}
        for part in parts[mode]:
            for key, n in part["statuses"].items():
                statuses[key] = statuses.get(key, 0) + n
            for feature, counts in part["sources"].items():
                for source, n in counts.items():
                    sources.setdefault(feature, {}).setdefault(source, 0)
                    sources[feature][source] += n
        elapsed = sum(part["elapsed"] for part in parts[mode])
        summary = summarize(latencies, statuses, elapsed, sources)
        per_round = [
            {
                k: v
                for k, v in summarize(part["latencies"], part["statuses"], part["elapsed"]).items()
                if k not in ("statuses", "sources")
            }
            | part["inside"]
            for part in parts[mode]
        ]
        rows.append(
            {
                "mode": mode,
                "configuration": MODE_LABELS.get(mode, mode),
                **summary,
                **inside.get(mode, {}),
                "rounds": per_round,
                "background": background.get(mode, {}),
            }
        )
    return {"settings": asdict(settings), "rows": rows, "ratios": round_ratios(rows)}


def round_ratios(rows: list[dict], base_mode: str = "vm") -> dict[str, dict]:
    """Each configuration's latency quantiles over the base configuration's, round by round (the two
    ran in the same round, on the same requests): the median over rounds with its min, max and the
    per-round values, so a tail set by a machine stall in one turn shows as spread, not as a shift.
    `all_requests` is the ratio of the quantiles pooled over every round, for reference."""
    base = next((r for r in rows if r["mode"] == base_mode), None)
    ratios: dict[str, dict] = {}
    if base is None:
        return ratios
    for row in rows:
        if row is base:
            continue
        for q in ("p50", "p99", "server_p50", "server_p99"):
            key = f"{q}_ms"
            pairs = [
                (mine[key], theirs[key]) for mine, theirs in zip(row["rounds"], base["rounds"], strict=True)
            ]
            per_round = [a / b for a, b in pairs if b and np.isfinite(a) and np.isfinite(b)]
            if not per_round:
                continue
            ratios[f"{q} {row['mode']}/{base_mode}"] = {
                "median": float(np.median(per_round)),
                "min": float(np.min(per_round)),
                "max": float(np.max(per_round)),
                "per_round": per_round,
                "all_requests": row[key] / base[key] if base.get(key) else None,
            }
    return ratios


def print_results(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="fxrec loadtest: same requests, interleaved turns (client-side latency; server-side in brackets)"
    )
    for column in ("configuration", "requests", "QPS", "p50 ms", "p95 ms", "p99 ms", "errors", "5xx"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for row in results["rows"]:
        table.add_row(
            row["configuration"],
            str(row["requests"]),
            f"{row['qps']:.1f}",
            f"{row['p50_ms']:.2f} ({row.get('server_p50_ms', float('nan')):.2f})",
            f"{row['p95_ms']:.2f} ({row.get('server_p95_ms', float('nan')):.2f})",
            f"{row['p99_ms']:.2f} ({row.get('server_p99_ms', float('nan')):.2f})",
            str(row["errors"]),
            str(row["server_errors"]),
        )
    console = Console(width=160)
    console.print(table)
    for name, value in results["ratios"].items():
        console.print(
            f"{name}: median {value['median']:.2f}x over {len(value['per_round'])} rounds "
            f"(min {value['min']:.2f}x, max {value['max']:.2f}x)"
        )
