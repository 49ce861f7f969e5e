"""Serving: the VM on the request path, FM knowledge from stores refreshed off it (SOAP, SOLARIS).

    fxrec serve --run runs/demo --vm vm_feed      POST /v1/score, GET /healthz, GET /metrics
    fxrec serve ... --funnel                      + POST /v1/funnel (retrieval -> ESR -> the VM)
    fxrec loadtest --run runs/demo --vm vm_feed   VM only vs + async refresh vs + FM inline
    fxrec refresh-worker --store redis://...      FM refresh from a Redis Stream, as its own process

Modules: schemas (HTTP contract), validation (request -> rows), catalog (server-side features),
scorer (the request path: each transfer channel's `serve`), sources (the stores and logs channels
read), soap / streams (refresh queues), refresher (FM -> stores), worker (FM refresh in other
processes), precompute (SOLARIS online), loopfm (LoopFM histories), guard (store circuit breaker),
models (what served channels need), windows (a request's `window_s`: Personalized Interpolation
with the VM's saved delay rates), service (wiring), app (FastAPI), server (running it;
`python -m fxrec.serving` is its child process). The commands, the load test, the SOLARIS offline
replay and the demo's closing step are jobs (`fxrec.jobs`). funnel / funnel_schemas: `POST /v1/funnel`,
the three stages of `fxrec.funnel.cascade` in one request, with the ESR's ad towers cached per ad version.

The audience API (`fxrec audience serve`: POST /v1/reach, POST /v1/quality) is audience (app and
service), audience_schemas, audience_quality (quality.json as rows); http holds what both APIs share
(body limit, error bodies).
"""
