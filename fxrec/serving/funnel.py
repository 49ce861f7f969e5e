"""`POST /v1/funnel`: one ad request through retrieval, the early-stage ranker and the served VM.

    request -> retrieval (the run's `funnel.retriever`, as of the request's day)
            -> ESR: user tower once per request, ad towers from a cache keyed by (ad, version)
            -> the served VM (the `/v1/score` path) on the ESR's top esr_k -> the final_k winners

The stages are chained by `fxrec.funnel.cascade.run_request`, as `fxrec funnel` chains them offline,
so both return the same winners for the same request and models. What it serves:

- the ads: `AdInventory`, the ads of the candidate log's last day (every eligible ad with its bid and
  ad-side features), each with a version that `update` bumps when the ad changes;
- the ESR `fxrec funnel` trained last (`<run>/funnel/esr`);
- retrieval prepared per day from the clicks and published FM user embeddings before it (the two
  latest days kept).

Per-stage latencies go to `/metrics` (`fxrec_funnel_stage_latency_seconds{stage=...}`), with the
ad-tower cache's hits, misses and invalidations. Validation is `/v1/score`'s: the same 4xx for the
same mistakes, never a 500.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
from prometheus_client import CollectorRegistry, Counter, Histogram

from fxrec.data.candidates import CANDIDATE_SPEC_FILE, CandidateLog, candidates_dir
from fxrec.data.eventlog import day_of
from fxrec.funnel.cascade import configured_retriever, run_request
from fxrec.funnel.engagements import Engagements
from fxrec.funnel.retrievers import PopularityRetriever
from fxrec.funnel.value import HIDE_PENALTY, post_click_conversion, value
from fxrec.run import RunError
from fxrec.serving.catalog import history_columns
from fxrec.serving.funnel_schemas import FunnelRequest
from fxrec.serving.metrics import LATENCY_BUCKETS
from fxrec.serving.schemas import Candidate, ScoreRequest

if TYPE_CHECKING:
    from fxrec.serving.service import Service

AD_COLUMNS = ("item_id", "advertiser_id", "ad_format", "ad_category", "ad_age_days", "bid")
FUNNEL_STAGES = ("retrieval", "esr", "final")


class FunnelMetrics:
    """The funnel's series in the server's registry (next to `ServingMetrics`')."""

    def __init__(self, registry: CollectorRegistry):
        self.latency = Histogram(
            "fxrec_funnel_request_latency_seconds",
            "end-to-end latency of POST /v1/funnel",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_latency = Histogram(
            "fxrec_funnel_stage_latency_seconds",
            "latency per funnel stage of one request (retrieval, esr, final)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tower_cache = Counter(
            "fxrec_funnel_ad_tower_cache",
            "ESR ad-tower cache lookups (hit, miss, invalidated: the ad's version changed)",
            ["event"],
            registry=registry,
        )


class AdInventory:
    """The ads the service can show, one row each (AD_COLUMNS), and each ad's version."""

    def __init__(self, table: pa.Table):
        order = np.argsort(table.column("item_id").to_numpy(), kind="stable")
        self.table = table.take(pa.array(order))
        self.items = self.table.column("item_id").to_numpy().astype(np.int64)
        self.versions = np.zeros(len(self.items), np.int64)
        self.lock = threading.Lock()

    @classmethod
    def from_candidate_log(cls, events) -> AdInventory:
        """The ads of the candidate log's last day, as that day's requests saw them."""
        log = CandidateLog(events)
        if not log.days:
            raise RunError(f"{log.path}: the candidate log holds no day; the funnel has no ads to serve")
        table = log.read_day(log.days[-1], list(AD_COLUMNS))
        first = np.unique(table.column("item_id").to_numpy(), return_index=True)[1]
        return cls(table.take(pa.array(np.sort(first))))

    def rows(self, items: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.items, np.asarray(items, np.int64))

    def features(self, items: np.ndarray) -> pa.Table:
        """AD_COLUMNS of `items` (ads of the inventory), in their order."""
        with self.lock:
            return self.table.take(pa.array(self.rows(items)))

    def update(self, item_id: int, **features: object) -> int:
        """Change an ad's features (e.g. `bid=2.5`); its version goes up, so its cached ESR ad-tower
        output is recomputed on the next request. Returns the new version."""
        unknown = sorted(set(features) - set(AD_COLUMNS[1:]))
        if unknown:
            raise ValueError(f"unknown ad features {unknown}; an ad has {list(AD_COLUMNS[1:])}")
        with self.lock:
            row = int(self.rows(np.array([item_id]))[0])
            if row >= len(self.items) or self.items[row] != item_id:
                raise KeyError(f"ad {item_id} is not in the inventory")
            for name, new in features.items():
                column = self.table.column(name).to_pylist()
                column[row] = new
                index = self.table.column_names.index(name)
                self.table = self.table.set_column(
                    index, name, pa.array(column, self.table.schema.field(name).type)
                )
            self.versions[row] += 1
            return int(self.versions[row])


class AdTowerCache:
    """ESR ad-tower outputs by ad: an entry serves while the ad's version is the one it was computed for."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[int, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def vectors(
        self, items: np.ndarray, versions: np.ndarray, compute: Callable[[np.ndarray], torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, int]]:
        """(n, out) the vectors of `items` at `versions`, computing (`compute(positions)`) only those
        not cached at that version; and this call's hits, misses and invalidations."""
        missing, invalidated = [], 0
        for i, (item, version) in enumerate(zip(items.tolist(), versions.tolist(), strict=True)):
            entry = self._entries.get(item)
            if entry is None or entry[0] != version:
                invalidated += entry is not None
                missing.append(i)
        if missing:
            computed = compute(np.array(missing, np.int64))
            for row, i in enumerate(missing):
                self._entries[int(items[i])] = (int(versions[i]), computed[row])
        out = torch.stack([self._entries[int(item)][1] for item in items.tolist()]) if len(items) else None
        counts = {"hit": len(items) - len(missing), "miss": len(missing), "invalidated": invalidated}
        return out, counts


class FunnelService:
    """The funnel of a `Service` (its VM is the final stage); `funnel(request)` answers one request."""

    def __init__(self, service: Service):
        from fxrec.funnel.esr.features import EsrFeatures
        from fxrec.funnel.esr.model import EarlyStageRanker

        self.service = service
        run = service.run
        self.config = run.config.funnel
        esr_dir = run.funnel_dir / "esr"
        if not (esr_dir / "esr.json").exists():
            raise RunError(
                f"{run.root}: no early-stage ranker ({esr_dir}); run `fxrec funnel --run {run.root}` first"
            )
        if not (candidates_dir(run.events) / CANDIDATE_SPEC_FILE).exists():
            raise RunError(f"{run.events}: no candidate log, so no ads for the funnel to serve")
        self.esr = EarlyStageRanker.load(esr_dir)
        self.features = EsrFeatures(service.catalog.spec)
        self.inventory = AdInventory.from_candidate_log(run.events)
        self.cache = AdTowerCache()
        self.metrics = FunnelMetrics(service.metrics.registry)
        self.hide_penalty = HIDE_PENALTY if self.config.hide_penalty is None else self.config.hide_penalty
        self.engagements = Engagements.from_log(run.event_log())
        self.publish_dir = run.publish_dir(run.config.fm.name)
        self.spec = service.catalog.spec
        self._days: dict[str, tuple] = {}  # day -> (retriever, popularity filler), the latest two

    # -- retrieval of a day -------------------------------------------------------------------------
    def retrieval(self, day: str):
        if day not in self._days:
            retriever = configured_retriever(self.config, self.publish_dir, self.spec)
            filler = PopularityRetriever()
            history = self.engagements.before(day)
            retriever.prepare(day, history)
            filler.prepare(day, history)
            self._days[day] = (retriever, filler)
            for old in sorted(self._days)[:-2]:
                del self._days[old]
        return self._days[day]

    # -- one request (on the scoring thread) -------------------------------------------------------
    def funnel(self, request: FunnelRequest) -> dict:
        started = time.perf_counter()
        ts = request.ts if request.ts is not None else int(self.service.clock())
        # The request's own row (user, context, surface), checked as /v1/score checks it, before any work:
        # the user tower reads it; the ad in it is any ad (the tower does not read it).
        inp = self.service.assembler.assemble(self._score_request(request, ts, self.inventory.items[:1]))
        sources = self.spec.sequence_sources()
        history = history_columns([inp.history], sources) if sources else None
        day = str(day_of(np.array([ts]))[0])
        timings = dict.fromkeys(FUNNEL_STAGES, 0.0)
        cache_counts = {"hit": 0, "miss": 0, "invalidated": 0}
        scored: dict[int, dict[str, float]] = {}

        def esr_scores(items: np.ndarray) -> np.ndarray:
            began = time.perf_counter()
            with torch.no_grad():
                u = self.esr.user_vectors(self.features.user_inputs(inp.table, history))  # once per request
                ads = self.inventory.features(items)
                versions = self.inventory.versions[self.inventory.rows(items)]
                a, counts = self.cache.vectors(
                    items,
                    versions,
                    lambda rows: self.esr.ad_vectors(self.features.ad_inputs(ads.take(pa.array(rows)))),
                )
                bid = torch.from_numpy(ads.column("bid").to_numpy().astype(np.float32))
                out = self.esr.score(u, a, bid).numpy()
            cache_counts.update(counts)
            timings["esr"] += time.perf_counter() - began
            return out

        def final_values(items: np.ndarray) -> np.ndarray:
            began = time.perf_counter()
            response, job = self.service.scorer.score(self._score_request(request, ts, items))
            self.service.offer(job)  # the user is queued for an FM refresh, as by /v1/score
            by_item = {int(c["item_id"]): c["scores"] for c in response["candidates"]}
            tasks = list(response["candidates"][0]["scores"])
            probs = {t: np.array([by_item[int(i)][t] for i in items], np.float32) for t in tasks}
            bid = self.inventory.features(items).column("bid").to_numpy().astype(np.float64)
            p_click = probs["click"].astype(np.float64)
            p_conversion = post_click_conversion(p_click, probs["conversion"].astype(np.float64))
            p_hide = probs["hide"].astype(np.float64) if "hide" in probs else np.zeros_like(p_click)
            scored.update({int(i): {t: float(probs[t][k]) for t in tasks} for k, i in enumerate(items)})
            timings["final"] += time.perf_counter() - began
            return value(bid, p_click, p_conversion, p_hide, self.hide_penalty)

        began = time.perf_counter()
        retriever, filler = self.retrieval(day)
        listed = retriever.retrieve(np.array([request.user_id], np.int64), self.config.retrieval_k * 4)[0]
        funnelled = run_request(
            listed,
            self.inventory.items,
            filler.ranked,
            esr_scores,
            final_values,
            self.config.retrieval_k,
            self.config.esr_k,
            request.top or self.config.final_k,
        )
        timings["retrieval"] = time.perf_counter() - began - timings["esr"] - timings["final"]
        esr_of = dict(zip(funnelled.retrieved.tolist(), funnelled.esr_scores.tolist(), strict=True))
        ads = [
            {"item_id": item, "value": float(v), "scores": scored[item], "esr_score": float(esr_of[item])}
            for item, v in zip(funnelled.winners.tolist(), funnelled.winner_values().tolist(), strict=True)
        ]
        for stage in FUNNEL_STAGES:
            self.metrics.stage_latency.labels(stage=stage).observe(timings[stage])
        for event, count in cache_counts.items():
            if count:
                self.metrics.tower_cache.labels(event=event).inc(count)
        timings["total"] = time.perf_counter() - started
        return {
            "request_id": request.request_id,
            "vm": self.service.vm.name,
            "surface": inp.surface,
            "day": day,
            "model_versions": {**self.service.scorer.versions, "esr": self.esr.notes.get("serves_day")},
            "ads": ads,
            "stages": {
                "eligible": len(self.inventory.items),
                "retrieval": len(funnelled.retrieved),
                "esr": len(funnelled.ranked),
                "final": len(funnelled.winners),
            },
            "tower_cache": cache_counts,
            "timings_ms": {k: round(v * 1e3, 3) for k, v in timings.items()},
        }

    def _score_request(self, request: FunnelRequest, ts: int, items: np.ndarray) -> ScoreRequest:
        """The `/v1/score` request of the funnel request's user and context for `items`, each with its
        ad-side features from the inventory (as the candidate log had them)."""
        ads = self.inventory.features(items).to_pylist()
        candidates = [
            Candidate.model_construct(
                item_id=int(ad["item_id"]),
                features={k: ad[k] for k in AD_COLUMNS[1:] if k in self.service.assembler.settable},
            )
            for ad in ads
        ]
        return ScoreRequest.model_construct(
            user_id=request.user_id,
            surface=request.surface,
            context=dict(request.context),
            candidates=candidates,
            ts=ts,
            request_id=request.request_id,
            window_s=None,
        )
