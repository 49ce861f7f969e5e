"""The HTTP contract of `POST /v1/funnel`: one ad request through retrieval, the early-stage ranker and
the final-stage VM (pydantic models, also the OpenAPI schema).

Unlike `/v1/score`, the client sends no candidates: the service retrieves them from the ads it serves
(the inventory), as a real ads system does. Shapes are checked here; what depends on the run (users,
surfaces, which context features the VM reads) is checked by `validation.py`, as for `/v1/score`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from fxrec.serving.schemas import Features, Id

MAX_TOP = 100
MAX_TS = 253_402_300_799  # 9999-12-31 23:59:59 UTC: retrieval names the request's day as YYYY-MM-DD


class FunnelRequest(BaseModel):
    """One ad request: a user and its context; the funnel finds the ads."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"user_id": 42, "surface": "feed", "context": {"hour": 19, "position": 1}}]
        },
    )

    user_id: Id
    surface: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="defaults to the final-stage VM's surface"
    )
    context: Features = Field(default_factory=dict, description="features of the request, e.g. hour")
    ts: Annotated[StrictInt, Field(ge=0, le=MAX_TS)] | None = Field(
        default=None,
        description="event time in unix seconds (defaults to the server's clock): retrieval reads what was "
        "known before its day",
    )
    top: Annotated[StrictInt, Field(ge=1, le=MAX_TOP)] | None = Field(
        default=None,
        description="winners to return (default: the run's funnel.final_k; at most funnel.esr_k, what the "
        "final stage ranks)",
    )
    request_id: Annotated[str, Field(max_length=128)] | None = None


class FunnelAd(BaseModel):
    item_id: int
    value: float = Field(description="the final stage's value: bid x pCTR x pCVR - hide_penalty x pHide")
    scores: dict[str, float] = Field(description="the final-stage VM's probability per task")
    esr_score: float = Field(description="the early-stage ranker's value of the ad")


class FunnelResponse(BaseModel):
    request_id: str | None
    vm: str
    surface: str
    day: str = Field(description="the day whose knowledge retrieval used (that of the request's ts)")
    model_versions: dict[str, str | None]
    ads: list[FunnelAd] = Field(description="the final stage's winners, best first")
    stages: dict[str, int] = Field(description="ads per stage: eligible, retrieval, esr, final")
    tower_cache: dict[str, int] = Field(description="ESR ad-tower cache hits and misses of this request")
    timings_ms: dict[str, float] = Field(description="milliseconds per stage")
