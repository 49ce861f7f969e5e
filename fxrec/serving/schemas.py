"""The HTTP contract of `POST /v1/score`, as pydantic models (they are also the OpenAPI schema).

Shapes are checked here (types, sizes, finiteness); what depends on the run -- which features a
model reads, which users and items exist -- is checked in `validation.py`, which knows the run.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from fxrec.transfer.serving import Source  # where an FM-derived input came from: the channels' vocabulary

MAX_CANDIDATES = 500
MAX_FEATURES = 64
MAX_LIST_VALUES = 256
MAX_ID = 2**63 - 1  # ids are int64 end to end

Id = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
FeatureName = Annotated[str, Field(min_length=1, max_length=64)]
# One feature value: an id (sparse), a list of ids (multi), a number (dense) or null (missing).
# Which of these a feature takes is checked against the run's DatasetSpec in validation.py.
FeatureValue = StrictInt | StrictFloat | Annotated[list[StrictInt], Field(max_length=MAX_LIST_VALUES)] | None
Features = Annotated[dict[FeatureName, FeatureValue], Field(max_length=MAX_FEATURES)]


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: Id
    features: Features = Field(default_factory=dict, description="per-candidate features, e.g. position")


class ScoreRequest(BaseModel):
    """One ad request: a user, its context and the candidates to score."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": 42,
                    "surface": "feed",
                    "context": {"hour": 19},
                    "candidates": [
                        {"item_id": 7, "features": {"position": 1}},
                        {"item_id": 9, "features": {"position": 2}},
                    ],
                }
            ]
        },
    )

    user_id: Id
    surface: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="defaults to the model's surface"
    )
    context: Features = Field(
        default_factory=dict, description="features shared by every candidate, e.g. hour"
    )
    candidates: Annotated[list[Candidate], Field(min_length=1, max_length=MAX_CANDIDATES)]
    ts: Annotated[StrictInt, Field(ge=0, le=2**40)] | None = Field(
        default=None, description="event time in unix seconds; defaults to the server's clock"
    )
    request_id: Annotated[str, Field(max_length=128)] | None = None
    window_s: Annotated[StrictInt | StrictFloat, Field(gt=0, le=10**9)] | None = Field(
        default=None,
        description="a conversion window in seconds, between the model's shortest and longest window head: "
        "each candidate's `window_score` is then P(conversion within it) by Personalized Interpolation",
    )


class CandidateScore(BaseModel):
    item_id: int
    scores: dict[str, float] = Field(description="probability per task")
    window_score: float | None = Field(
        default=None,
        description="P(conversion within the request's window_s): its advertiser's interpolation between "
        "the shortest and longest window heads (only when the request sent window_s)",
    )
    sources: dict[str, Source] = Field(description="source of each FM-derived feature for this candidate")


class ScoreResponse(BaseModel):
    request_id: str | None
    vm: str
    surface: str
    window_s: float | None = Field(default=None, description="the request's window_s, when it sent one")
    model_versions: dict[str, str | None] = Field(
        description="vm and fm versions (the day each was trained through)"
    )
    candidates: list[CandidateScore]
    sources: dict[str, dict[str, int]] = Field(description="per FM-derived feature: candidates per source")
    timings_ms: dict[str, float]


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong with the request, in one sentence")
    details: list[str] = Field(default_factory=list)


class Health(BaseModel):
    status: str
    vm: str
    mode: str
    store: dict[str, bool]
    refresh_queue_depth: int
