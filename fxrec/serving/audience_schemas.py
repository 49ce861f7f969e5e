"""The HTTP contract of the audience API (`POST /v1/reach`, `POST /v1/quality`), as pydantic models
(they are also its OpenAPI schema). Shapes are checked here; what depends on the index -- which
fields, values and surfaces exist -- is checked against its schema when the query is parsed."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from fxrec.serving.schemas import ErrorResponse

MAX_QUERY_CHARS = 2000
Name = Annotated[str, Field(min_length=1, max_length=128)]


class ReachRequest(BaseModel):
    """A targeting query (fxrec.audience.query's language), optionally restricted to one surface."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": "age in 18..24 and (interest:sports or interest:outdoor) and not country:US"},
                {"query": "country:US and interest:travel", "surface": "video"},
            ]
        },
    )

    query: Annotated[str, Field(max_length=MAX_QUERY_CHARS)] = Field(
        description="e.g. `age in 18..24 and (interest:sports or interest:outdoor) and not country:US`"
    )
    surface: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="count only impressions on this surface (the same as `and surface = ...`)"
    )
    request_id: Annotated[str, Field(max_length=128)] | None = None


class Interval(BaseModel):
    estimate: float
    low: float
    high: float


class FallbackStratum(BaseModel):
    stratum: str = Field(description="each dimension's cell, e.g. `country US, impression tier [1, 3)`")
    users: int = Field(description="users in the stratum (census)")
    sampled: int = Field(description="of them in the sample")


class ReachResponse(BaseModel):
    request_id: str | None
    query: str
    surface: str | None
    users: Interval = Field(description="unique users reached, with the confidence interval")
    impressions: Interval = Field(description="their impressions (on the query's surfaces)")
    confidence: float = Field(description="the intervals' confidence level, e.g. 0.95")
    support: int = Field(description="sampled users the query reaches in the strata it leaves undecided")
    fell_back: bool = Field(description="too few sampled users: coarser strata's rates were blended in")
    fallback_strata: list[FallbackStratum] = Field(
        default_factory=list, description="the first strata the fall-back entered, in words"
    )
    fallback_strata_count: int = Field(default=0, description="how many strata the fall-back entered")
    exact: bool = Field(description="every stratum was decided by the query: the counts are exact")
    timings_ms: dict[str, float]


class QueryErrorResponse(ErrorResponse):
    """A query that does not parse or names what the index lacks: `details` is the reason with its
    column, then the query and a caret line under the offending token (aligned)."""

    column: int | None = Field(default=None, description="1-based column of the offending token")
    caret: str | None = Field(default=None, description="spaces then ^ under the offending token")


class QualityRequest(BaseModel):
    """Which quality rows to return: every provider and segment by default."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"provider": "dmp_a"}]})

    provider: Name | None = Field(default=None, description="one data provider, e.g. dmp_a")
    segment: Name | None = Field(default=None, description="one segment, e.g. sports")


class QualityRow(BaseModel):
    """One provider's segment as `fxrec audience quality` estimated it from campaign aggregates."""

    model_config = ConfigDict(extra="allow")

    provider: str
    segment: str
    rank: int | None = Field(default=None, description="the provider's rank (1: best)")
    campaigns: int | None = Field(default=None, description="campaigns usable for this label")
    precision: float | None = None
    precision_ci: list[float | None] | None = Field(default=None, description="95% interval")
    false_positive_rate: float | None = None
    recall: float | None = None
    cv_error: float | None = Field(
        default=None, description="held-out campaigns' aggregate error (cross-validation)"
    )
    methods: dict[str, dict] | None = Field(
        default=None, description="every estimator's numbers (least_squares, mle, naive, ...)"
    )
    skipped: str | None = Field(default=None, description="why the segment has no estimate")


class ProviderQuality(BaseModel):
    """A provider's summary over its segments (mean precision, false-positive rate, recall, rank)."""

    model_config = ConfigDict(extra="allow")

    provider: str
    rank: int | None = None
    segments: int | None = None
    precision: float | None = None
    false_positive_rate: float | None = None


class QualityResponse(BaseModel):
    method: str = Field(description="the estimator of the top-level numbers, e.g. mle")
    campaigns: int | None = Field(description="campaigns the estimates come from")
    rows: list[QualityRow] = Field(description="per provider and segment, providers in rank order")
    providers: list[ProviderQuality] = Field(description="the providers of `rows`, best first")


class AudienceHealth(BaseModel):
    status: str
    index: dict = Field(description="what answers reach queries: kind, users, strata, sampled rows")
    quality: bool = Field(description="a quality table is loaded")
