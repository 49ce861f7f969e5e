"""The request path: validate -> each transfer channel's input (`channel.serve`) -> VM -> scores.

The scorer knows no channel by name: every channel of the VM builds its own input for the request's
candidates from the serving sources the service opened for it (fxrec/transfer/serving.py), and says
where each candidate's input came from. Nothing here waits for the FM in the default configuration:
the SUM user embedding and the SOLARIS pair embeddings are store reads (guarded: a store fault
degrades a source, never the request). The "inline" configuration instead runs the FM on the
request's rows first and hands its output to the channels -- what SOAP avoids, kept so the load test
can show its cost.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch

from fxrec.serving.catalog import UserHistory
from fxrec.serving.metrics import ServingMetrics
from fxrec.serving.models import LoadedModel
from fxrec.serving.rows import model_batch
from fxrec.serving.schemas import ScoreRequest, Source
from fxrec.serving.soap import RefreshJob
from fxrec.serving.validation import RequestAssembler, RequestError, ScoringInput
from fxrec.serving.windows import ServedWindows
from fxrec.transfer.serving import Needs, ServingRequest, ServingSources

Mode = Literal["vm", "async", "inline"]


class Scorer:
    def __init__(
        self,
        vm: LoadedModel,
        fm: LoadedModel | None,
        assembler: RequestAssembler,
        metrics: ServingMetrics,
        mode: Mode,
        sources: ServingSources,
        fm_version: str | None = None,
        windows: ServedWindows | None = None,
    ):
        self.vm = vm
        self.windows = windows or ServedWindows(vm.name, None)
        self.fm = fm
        self.assembler = assembler
        self.spec = assembler.spec
        self.metrics = metrics
        self.mode = mode
        self.sources = sources
        self.channels = list(getattr(vm.model, "channels", []))
        needs = Needs()
        for channel in self.channels:
            needs = needs | channel.serving_needs()
        self.default_k = max(1, needs.stabilize_k)  # one user-embedding read per request serves them all
        self.versions = {"vm": vm.version, "fm": fm.version if fm is not None else fm_version}

    def score(self, request: ScoreRequest) -> tuple[dict, RefreshJob]:
        started = time.perf_counter()
        if request.window_s is not None:
            self.windows.check(request.window_s)
        inp = self.assembler.assemble(request)
        validated = time.perf_counter()
        n = len(inp.item_ids)
        fm_output = self._inline(inp) if self.mode == "inline" else None
        context = ServingRequest(inp.user_id, inp.item_ids, inp.ts, self.sources, fm_output, self.default_k)
        inputs = {}
        sources: dict[str, list[Source]] = {}
        for channel in self.channels:
            served = channel.serve(context)
            if served is not None:
                inputs[channel.input_key] = served.input
                sources[channel.source_label] = served.sources
        fetched = time.perf_counter()
        batch = model_batch(self.spec, inp.table, self.vm.model.features, [inp.history] * n)
        batch.inputs.update(inputs)
        with torch.no_grad():
            logits = self.vm.model(batch).logits
        probabilities = {task: torch.sigmoid(value).numpy() for task, value in logits.items()}
        if not all(np.isfinite(p).all() for p in probabilities.values()):
            raise RequestError(
                422, "the model produced a non-finite score for these inputs; check for extreme values"
            )
        at_window = (
            self.windows.probabilities(probabilities, inp.table, float(request.window_s))
            if request.window_s is not None
            else None
        )
        done = time.perf_counter()
        self.metrics.stage_latency.labels(stage="validate").observe(validated - started)
        self.metrics.stage_latency.labels(stage="fm_inline" if self.mode == "inline" else "store").observe(
            fetched - validated
        )
        self.metrics.stage_latency.labels(stage="model").observe(done - fetched)
        self.metrics.candidates.observe(n)
        for feature, per_candidate in sources.items():
            for source in per_candidate:
                self.metrics.sources.labels(feature=feature, source=source.value).inc()
        response = self._response(
            request,
            inp,
            probabilities,
            sources,
            at_window,
            {
                "validate": validated - started,
                "features": fetched - validated,
                "model": done - fetched,
            },
        )
        job = RefreshJob(request.user_id, inp.item_ids.tolist(), dict(request.context), inp.surface)
        return response, job

    @torch.no_grad()
    def _inline(self, inp: ScoringInput):
        """The FM on the request path (what SOAP and SOLARIS take off it): its output for the channels."""
        assert self.fm is not None
        histories: list[UserHistory | None] = [inp.history] * len(inp.item_ids)
        return self.fm.model(model_batch(self.spec, inp.table, self.fm.model.features, histories))

    # -- response -------------------------------------------------------------------------------
    def _response(
        self,
        request: ScoreRequest,
        inp: ScoringInput,
        probabilities: dict,
        sources: dict,
        at_window: np.ndarray | None,
        timings: dict,
    ) -> dict:
        tasks = list(probabilities)
        columns = [probabilities[t].tolist() for t in tasks]
        source_names = {f: [s.value for s in per] for f, per in sources.items()}
        candidates = [
            {
                "item_id": int(item),
                "scores": {t: columns[k][i] for k, t in enumerate(tasks)},
                "sources": {f: names[i] for f, names in source_names.items()},
            }
            for i, item in enumerate(inp.item_ids.tolist())
        ]
        if at_window is not None:
            for candidate, value in zip(candidates, at_window.tolist(), strict=True):
                candidate["window_score"] = value
        summary = {f: {s: names.count(s) for s in dict.fromkeys(names)} for f, names in source_names.items()}
        response = {
            "request_id": request.request_id,
            "vm": self.vm.name,
            "surface": inp.surface,
            "model_versions": self.versions,
            "candidates": candidates,
            "sources": summary,
            "timings_ms": {k: round(v * 1e3, 3) for k, v in timings.items()},
        }
        if request.window_s is not None:
            response["window_s"] = float(request.window_s)
        return response
