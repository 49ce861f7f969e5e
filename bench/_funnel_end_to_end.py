"""bench/funnel.py's end-to-end part: `fxrec funnel` over the evaluation days, and the per-stage
latency of one three-stage request.

- `end_to_end`: the three stages (ALURE retrieval -> an ESR -> the final-stage VM) over the evaluation
  days' logged requests (`fxrec.jobs.funnel.run_funnel`, the bench's ESR given, nothing retrained):
  per stage the ads handed on, recall of clicked ads and the final stage's value kept, and the
  end-to-end value kept against scoring every candidate with the final stage;
- `request_latency`: `POST /v1/funnel`'s path in this process (`fxrec.serving.funnel.FunnelService`,
  no HTTP): requests replayed from the last day's impressions, one at a time after a warm-up, each
  stage's milliseconds (retrieval; the ESR with its user tower per request and its ad-tower cache;
  the VM through the `/v1/score` path) as p50 / p99.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from fxrec.config import FunnelConfig, RunConfig
from fxrec.run import Run


def end_to_end(
    run: Path, config: RunConfig, esr_models: dict, vm: str, days: int, funnel: dict | None = None
) -> dict:
    """`fxrec funnel` on the bench's run with `esr_models[day]` (the ESR trained on the days before `day`)
    serving each evaluation day; writes the funnel block into the run's config (for the server)."""
    from fxrec.funnel.esr import EsrFeatures
    from fxrec.jobs.funnel import EsrStage, run_funnel

    block = FunnelConfig(vm=vm, eval_days=days, **(funnel or {}))
    config = config.model_copy(update={"funnel": block})
    Run(run, config).write_config()
    features = EsrFeatures(Run(run, config).event_log().spec)
    stages = {day: EsrStage(model, features) for day, model in esr_models.items()}
    return run_funnel(run, config, progress=False, quiet=True, esr_for_day=stages.__getitem__)


def request_latency(run: Path, vm: str, requests: int = 300, warmup: int = 20, seed: int = 0) -> dict:
    """p50 / p99 milliseconds per stage (and in all) of one /v1/funnel request, over `requests` requests
    replayed from the last day of the run's log; the run must hold `fxrec funnel`'s ESR."""
    from fxrec.serving.funnel_schemas import FunnelRequest
    from fxrec.serving.service import Service, ServingConfig

    with tempfile.TemporaryDirectory(prefix="fxrec-bench-funnel-") as tmp:
        config = ServingConfig(
            mode="vm",
            funnel=True,
            store=f"lmdb://{Path(tmp) / 'store'}",
            cache=f"lmdb://{Path(tmp) / 'solaris'}",
        )
        service = Service(run, vm, config)
        catalog = service.catalog
        log = service.run.event_log()
        surfaces = service.vm.config.surfaces or log.spec.surfaces
        events = pl.from_arrow(log.read_day(log.days[-1])).filter(pl.col("surface").is_in(surfaces))
        rng = np.random.default_rng(seed)
        rows = rng.choice(events.height, size=min(events.height, requests + warmup), replace=False)
        timings: dict[str, list[float]] = {}
        started = time.perf_counter()
        for n, row in enumerate(rows.tolist()):
            event = events.row(row, named=True)
            body = FunnelRequest(
                user_id=int(event["user_id"]),
                surface=event["surface"],
                context={f: event[f] for f in catalog.surface_context[event["surface"]]},
                ts=int(event["ts"]),
            )
            answer = service.funnel.funnel(body)
            if n >= warmup:
                for stage, ms in answer["timings_ms"].items():
                    timings.setdefault(stage, []).append(ms)
        seconds = time.perf_counter() - started
        cache = len(service.funnel.cache)
    return {
        "requests": len(timings.get("total", [])),
        "ms": {
            stage: {
                "p50": round(float(np.percentile(v, 50)), 3),
                "p99": round(float(np.percentile(v, 99)), 3),
            }
            for stage, v in timings.items()
        },
        "ad_vectors_cached": cache,
        "seconds": round(seconds, 2),
    }
