"""A schema-valid request -> an Arrow table of candidate rows, or a 4xx that says what is wrong.

The table has one row per candidate and every column of the event log the FM and VM read, so
`EventFrame(table, spec, model_features, history)` turns it into the same Batch the trainer built
from the log. Values come from, in order: the candidate's `features`, the request's `context`, the
server-side catalog (user / item / surface features); context features a model reads must be sent
unless the log never fills them on that surface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fxrec.data.schema import FeatureKind, FeatureSpec
from fxrec.serving.catalog import FeatureCatalog, FeatureRole, UserHistory, history_before
from fxrec.serving.schemas import MAX_ID, ScoreRequest

_ARROW = {
    FeatureKind.sparse: pa.int64(),
    FeatureKind.multi: pa.list_(pa.int64()),
    FeatureKind.dense: pa.float32(),
}
_NAMED = 5  # how many offending names or ids an error message lists


class RequestError(Exception):
    """Bad input: becomes an HTTP `status` with `message` (and optional `details`) as the body."""

    def __init__(self, status: int, message: str, details: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


@dataclass
class ScoringInput:
    user_id: int
    surface: str
    ts: int
    item_ids: np.ndarray  # (n,) int64
    table: pa.Table  # (n rows) core columns + every non-sequence feature
    history: UserHistory | None
    known_user: bool


def _listed(values: list) -> str:
    head = ", ".join(repr(v) for v in values[:_NAMED])
    return f"{head}, ... ({len(values)} in all)" if len(values) > _NAMED else head


def check_value(feature: FeatureSpec, value: object, where: str) -> object:
    """The value if it fits the feature's kind (None means missing), else a 422 naming `where`."""
    if value is None:
        return None
    kind = feature.kind
    if kind is FeatureKind.sparse:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
            return value
        expected = f"an id (integer 0..{MAX_ID}) for sparse feature {feature.name!r}"
    elif kind is FeatureKind.multi:
        if isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID for v in value
        ):
            return value
        expected = f"a list of ids (integers 0..{MAX_ID}) for multi-valued feature {feature.name!r}"
    else:
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and abs(value) < 3.0e38
        ):
            return float(value)
        expected = f"a finite number (float32 range) for dense feature {feature.name!r}"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    raise RequestError(422, f"{where}: expected {expected}, got {shown}")


class RequestAssembler:
    """Checks a ScoreRequest against a run and builds its candidate table (see module docstring).

    model_features: the features the VM reads (must be resolvable); the FM's extra features are
    filled when known and left missing otherwise.
    """

    def __init__(self, catalog: FeatureCatalog, model_features: list[str], surfaces: list[str], clock):
        self.catalog = catalog
        self.spec = catalog.spec
        self.surfaces = surfaces
        self.clock = clock
        self.plain = [f for f in self.spec.features if f.kind is not FeatureKind.sequence]
        self.settable = {f.name: f for f in self.plain if f.name not in ("user_id", "item_id")}
        self.model_features = set(model_features)
        self.roles = catalog.roles
        self.required_user = [
            f for f in model_features if self.roles.get(f) is FeatureRole.user and f != "user_id"
        ]
        self.required_item = [
            f for f in model_features if self.roles.get(f) is FeatureRole.item and f != "item_id"
        ]

    def assemble(self, request: ScoreRequest) -> ScoringInput:
        surface = self._surface(request.surface)
        self._check_names(request)
        context = {k: check_value(self.settable[k], v, f"context.{k}") for k, v in request.context.items()}
        overrides = [
            {
                k: check_value(self.settable[k], v, f"candidates[{i}].features.{k}")
                for k, v in c.features.items()
            }
            for i, c in enumerate(request.candidates)
        ]
        item_ids = np.fromiter(
            (c.item_id for c in request.candidates), dtype=np.int64, count=len(request.candidates)
        )
        known_user = self.catalog.has_user(request.user_id)
        if not known_user:
            missing = [f for f in self.required_user if f not in context]
            if missing:
                raise RequestError(
                    404,
                    f"unknown user_id {request.user_id}: not in the run's log ({self.catalog.users.num_rows} users known); "
                    f"for a new user send the user features {missing} in `context`",
                )
        item_rows = self.catalog.item_rows(item_ids)
        unknown = [
            i
            for i, row in enumerate(item_rows)
            if row < 0 and any(f not in overrides[i] for f in self.required_item)
        ]
        if unknown:
            ids = [int(item_ids[i]) for i in unknown]
            raise RequestError(
                404,
                f"unknown item_id(s) {_listed(ids)}: not in the run's log; for a new item send its item features "
                f"{self.required_item} in the candidate's `features`",
            )
        self._check_context(surface, context, overrides)
        ts = request.ts if request.ts is not None else int(self.clock())
        table = self._table(request, surface, ts, item_ids, item_rows, context, overrides, known_user)
        history = history_before(self.catalog.history_of(request.user_id), ts)
        return ScoringInput(request.user_id, surface, ts, item_ids, table, history, known_user)

    # -- checks ---------------------------------------------------------------------------------
    def _surface(self, surface: str | None) -> str:
        if surface is None:
            if len(self.surfaces) == 1:
                return self.surfaces[0]
            raise RequestError(422, f"surface: required (this model serves {self.surfaces})")
        if surface not in self.surfaces:
            raise RequestError(
                422, f"surface: {surface!r} is not served by this model; it serves {self.surfaces}"
            )
        return surface

    def _check_names(self, request: ScoreRequest) -> None:
        given = set(request.context)
        for candidate in request.candidates:
            given.update(candidate.features)
        unknown = sorted(given - set(self.settable))
        if unknown:
            hint = ""
            if {"user_id", "item_id"} & set(unknown):
                hint = " (user_id and item_id are top-level fields, not features)"
            raise RequestError(
                422,
                f"unknown feature(s) {_listed(unknown)}{hint}; features a request may set: {sorted(self.settable)}",
            )

    def _check_context(self, surface: str, context: dict, overrides: list[dict]) -> None:
        needed = [f for f in self.catalog.surface_context.get(surface, []) if f in self.model_features]
        missing = [f for f in needed if f not in context and not all(f in o for o in overrides)]
        if missing:
            raise RequestError(
                422,
                f"missing feature(s) {missing}: the model reads them on surface {surface!r}; "
                "send them in `context` or in every candidate's `features` (null means unknown)",
            )

    # -- the table ------------------------------------------------------------------------------
    def _table(
        self,
        request: ScoreRequest,
        surface: str,
        ts: int,
        item_ids: np.ndarray,
        item_rows: np.ndarray,
        context: dict,
        overrides: list[dict],
        known_user: bool,
    ) -> pa.Table:
        n = len(item_ids)
        catalog = self.catalog
        user_row = catalog.user_row(request.user_id) if known_user else -1
        safe_rows = pa.array(np.maximum(item_rows, 0))
        has_override = any(overrides)
        columns: dict[str, pa.Array] = {
            "event_id": pa.array(np.arange(n, dtype=np.int64)),
            "ts": pa.array(np.full(n, ts, dtype=np.int64)),
            "user_id": pa.array(np.full(n, request.user_id, dtype=np.int64)),
            "item_id": pa.array(item_ids),
            "surface": pa.array([surface] * n, pa.string()),
        }
        for task in self.spec.tasks:
            columns[task] = pa.array(np.zeros(n, dtype=np.float32))
        for feature in self.plain:
            name, arrow_type = feature.name, _ARROW[feature.kind]
            if name in ("user_id", "item_id"):
                continue
            role = self.roles[name]
            if role is FeatureRole.user:
                value = (
                    context[name]
                    if name in context
                    else (catalog.users.column(name)[user_row].as_py() if known_user else None)
                )
                base: pa.Array | list = [value] * n
            elif role is FeatureRole.item:
                base = catalog.items.column(name).take(safe_rows)
                if (item_rows < 0).any():
                    valid = item_rows >= 0
                    base = [v if valid[i] else None for i, v in enumerate(base.to_pylist())]
            elif role is FeatureRole.surface:
                base = [catalog.surface_values[surface].get(name)] * n
            else:
                base = [context.get(name)] * n
            if has_override and any(name in o for o in overrides):
                values = base.to_pylist() if isinstance(base, pa.ChunkedArray | pa.Array) else list(base)
                base = [o[name] if name in o else values[i] for i, o in enumerate(overrides)]
            columns[name] = (
                base if isinstance(base, pa.ChunkedArray | pa.Array) else pa.array(base, arrow_type)
            )
            if columns[name].type != arrow_type:
                columns[name] = columns[name].cast(arrow_type)
        return pa.table(columns)
