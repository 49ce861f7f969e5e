"""The request path: validate -> FM-derived inputs from the stores -> VM -> scores.

Nothing here waits for the FM in the default configuration: the SUM user embedding and the SOLARIS
pair embeddings are store reads (guarded: a store fault degrades a source, never the request). The
"inline" configuration instead runs the FM on the request's rows first -- what SOAP avoids, kept so
the load test can show its cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fxrec.serving.catalog import UserHistory
from fxrec.serving.guard import GuardedStore
from fxrec.serving.loopfm import LoopFMLog
from fxrec.serving.metrics import ServingMetrics
from fxrec.serving.models import LoadedModel, stabilize_k
from fxrec.serving.precompute import PairReader
from fxrec.serving.rows import as_tensor, model_batch
from fxrec.serving.schemas import ScoreRequest, Source
from fxrec.serving.soap import RefreshJob
from fxrec.serving.validation import RequestAssembler, RequestError, ScoringInput

Mode = Literal["vm", "async", "inline"]
SUM_FEATURE, TAE_FEATURE, LOOPFM_FEATURE = "sum_user", "tae", "loopfm"


@dataclass
class LoopFMInput:
    """The LoopFM channel's serving input: the publish log and the channel's own cut of it."""

    log: LoopFMLog
    max_len: int
    retention_days: float
    code_dim: int


@dataclass
class UserEmbedding:
    vector: np.ndarray | None  # (d,)
    source: Source
    age_seconds: float | None


class Scorer:
    def __init__(
        self,
        vm: LoadedModel,
        fm: LoadedModel | None,
        assembler: RequestAssembler,
        metrics: ServingMetrics,
        mode: Mode,
        user_store: GuardedStore | None,
        pair_reader: PairReader | None,
        uses_sum: bool,
        uses_tae: bool,
        fresh_seconds: float = 3600.0,
        fm_version: str | None = None,
        loopfm: LoopFMInput | None = None,
    ):
        self.vm = vm
        self.fm = fm
        self.assembler = assembler
        self.spec = assembler.spec
        self.metrics = metrics
        self.mode = mode
        self.user_store = user_store
        self.pair_reader = pair_reader
        self.uses_sum = uses_sum
        self.uses_tae = uses_tae
        self.fresh_seconds = fresh_seconds
        self.stabilize_k = stabilize_k(vm.config)
        self.fm_version = fm.version_int if fm is not None else None
        self.versions = {"vm": vm.version, "fm": fm.version if fm is not None else fm_version}
        self.loopfm = loopfm
        self.derived = [name for name, used in ((SUM_FEATURE, uses_sum), (TAE_FEATURE, uses_tae)) if used]

    def score(self, request: ScoreRequest) -> tuple[dict, RefreshJob]:
        started = time.perf_counter()
        inp = self.assembler.assemble(request)
        validated = time.perf_counter()
        n = len(inp.item_ids)
        extras: dict[str, torch.Tensor] = {}
        sources: dict[str, list[Source]] = {}
        if self.mode == "inline":
            self._inline(inp, extras, sources)
        else:
            self._from_stores(inp, extras, sources)
        if self.loopfm is not None:
            self._loopfm(inp, extras, sources)
        fetched = time.perf_counter()
        batch = model_batch(self.spec, inp.table, self.vm.model.features, [inp.history] * n)
        batch.extras.update(extras)
        with torch.no_grad():
            logits = self.vm.model(batch).logits
        probabilities = {task: torch.sigmoid(value).numpy() for task, value in logits.items()}
        if not all(np.isfinite(p).all() for p in probabilities.values()):
            raise RequestError(
                422, "the model produced a non-finite score for these inputs; check for extreme values"
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
            {
                "validate": validated - started,
                "features": fetched - validated,
                "model": done - fetched,
            },
        )
        job = RefreshJob(request.user_id, inp.item_ids.tolist(), dict(request.context), inp.surface)
        return response, job

    # -- FM-derived inputs ----------------------------------------------------------------------
    def read_user_embedding(self, user_id: int) -> UserEmbedding:
        if self.user_store is None:
            return UserEmbedding(None, Source.missing, None)
        read, local = self.user_store.read(np.array([user_id], dtype=np.int64), self.stabilize_k)
        if not read.found[0]:
            return UserEmbedding(None, Source.missing, None)
        age = max(0.0, self.user_store.clock() - float(read.ts[0]))
        self.metrics.staleness.observe(age)
        fresh = not local[0] and int(read.version[0]) == self.fm_version and age <= self.fresh_seconds
        return UserEmbedding(read.vectors[0], Source.fresh if fresh else Source.stale, age)

    def _from_stores(self, inp: ScoringInput, extras: dict, sources: dict) -> None:
        n = len(inp.item_ids)
        user = self.read_user_embedding(inp.user_id) if (self.uses_sum or self.uses_tae) else None
        if self.uses_sum:
            assert user is not None and self.user_store is not None
            vector = user.vector if user.vector is not None else np.zeros(self.user_store.dim, np.float32)
            extras["sum_user"] = as_tensor(np.broadcast_to(vector, (n, len(vector))))
            extras["sum_user_found"] = torch.full((n,), 1.0 if user.vector is not None else 0.0)
            sources[SUM_FEATURE] = [user.source] * n
        if self.uses_tae:
            assert self.pair_reader is not None and user is not None
            vectors, found, tae_sources = self.pair_reader.read(inp.user_id, inp.item_ids, user.vector)
            extras["tae"] = as_tensor(vectors)
            extras["tae_found"] = torch.from_numpy(found.astype(np.float32))
            sources[TAE_FEATURE] = tae_sources

    def _loopfm(self, inp: ScoringInput, extras: dict, sources: dict) -> None:
        assert self.loopfm is not None
        n = len(inp.item_ids)
        cut = self.loopfm
        sequence = cut.log.sequence(inp.user_id, inp.ts, cut.max_len, cut.retention_days, cut.code_dim)
        extras.update(cut.log.extras(sequence, n))
        sources[LOOPFM_FEATURE] = [Source.stale if len(sequence) else Source.missing] * n

    @torch.no_grad()
    def _inline(self, inp: ScoringInput, extras: dict, sources: dict) -> None:
        """The FM on the request path: what SOAP and SOLARIS take off it."""
        assert self.fm is not None
        n = len(inp.item_ids)
        histories: list[UserHistory | None] = [inp.history] * n
        output = self.fm.model(model_batch(self.spec, inp.table, self.fm.model.features, histories))
        user = output.representations.get("user")
        if self.uses_sum and user is not None:
            extras["sum_user"] = user.float()
            extras["sum_user_found"] = torch.ones(n)
            sources[SUM_FEATURE] = [Source.inline] * n
        tae = output.representations.get("tae")
        if self.uses_tae and tae is not None:
            extras["tae"] = tae.float()
            extras["tae_found"] = torch.ones(n)
            sources[TAE_FEATURE] = [Source.inline] * n

    # -- response -------------------------------------------------------------------------------
    def _response(
        self, request: ScoreRequest, inp: ScoringInput, probabilities: dict, sources: dict, timings: dict
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
        summary = {f: {s: names.count(s) for s in dict.fromkeys(names)} for f, names in source_names.items()}
        return {
            "request_id": request.request_id,
            "vm": self.vm.name,
            "surface": inp.surface,
            "model_versions": self.versions,
            "candidates": candidates,
            "sources": summary,
            "timings_ms": {k: round(v * 1e3, 3) for k, v in timings.items()},
        }
