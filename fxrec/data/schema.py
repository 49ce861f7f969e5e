"""The event log's columns and the DatasetSpec that says which features exist and who sees them.

An event log is one row per impression (see DESIGN.md). A `DatasetSpec` travels with it as
`spec.yaml`; every model reads its features from there, so a VM config only has to name the
subset it uses.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Columns every event log has, with their Arrow types.
CORE_COLUMNS: dict[str, pa.DataType] = {
    "event_id": pa.int64(),
    "ts": pa.int64(),
    "user_id": pa.int64(),
    "item_id": pa.int64(),
    "surface": pa.string(),
    "click": pa.float32(),
}
OPTIONAL_COLUMNS: dict[str, pa.DataType] = {
    "advertiser_id": pa.int64(),
    "conversion": pa.float32(),
    "conversion_delay_s": pa.float32(),
}


class FeatureKind(StrEnum):
    sparse = "sparse"  # one categorical id per event
    multi = "multi"  # a list of categorical ids per event
    dense = "dense"  # one float per event
    sequence = "sequence"  # the user's history of a column, derived leak-free from the log


class FeatureSpec(BaseModel):
    """One model input. Sparse ids are hashed into `cardinality` rows; row 0 means missing."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: FeatureKind
    cardinality: int | None = Field(default=None, ge=2)
    vm: bool = True  # visible to expert models; the FM sees every feature
    source: str | None = None  # sequence: the event column collected into the history
    table: str | None = None  # share an embedding table with this feature (e.g. history and item_id)
    # sequence: the parallel sequence feature holding each history entry's event type (e.g. the surface of
    # each past click; type = its table row - 1), which Kunlun's event-level towers split the history on
    event_types: str | None = None

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if self.kind is not FeatureKind.dense and self.cardinality is None and self.table is None:
            raise ValueError(f"feature {self.name!r} ({self.kind.value}) needs a cardinality")
        if self.kind is FeatureKind.sequence and self.source is None:
            raise ValueError(f"sequence feature {self.name!r} needs a source column")
        if self.event_types is not None and self.kind is not FeatureKind.sequence:
            raise ValueError(f"feature {self.name!r} has event_types, which only a sequence feature has")
        return self

    @property
    def table_name(self) -> str:
        return self.table or self.name


class DatasetSpec(BaseModel):
    """What a log contains: features, label tasks, surfaces and the user-history length."""

    model_config = ConfigDict(extra="forbid")

    name: str
    features: list[FeatureSpec]
    tasks: list[str] = ["click"]
    surfaces: list[str]
    history_length: int = Field(default=20, ge=1)
    history_label: str = "click"  # which label makes an event enter the user's history

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"features named twice: {duplicated}")
        for feature in self.features:
            if feature.table and feature.table not in names:
                raise ValueError(f"feature {feature.name!r} shares table {feature.table!r}, which is not a feature")
            if feature.event_types is not None and (
                feature.event_types == feature.name
                or feature.event_types not in names
                or self.feature(feature.event_types).kind is not FeatureKind.sequence
            ):
                raise ValueError(
                    f"feature {feature.name!r}: event_types {feature.event_types!r} must name another sequence feature"
                )
        if not is_label(self.history_label, self.tasks):
            raise ValueError(
                f"history_label {self.history_label!r} is not a label: expected 'click', 'conversion', a task "
                f"({self.tasks}) or a 'label_*' column"
            )
        return self

    def feature(self, name: str) -> FeatureSpec:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature {name!r} in dataset {self.name!r}; known: {[f.name for f in self.features]}")

    def select(self, names: list[str] | None, role: str) -> list[FeatureSpec]:
        """The features a model sees: the FM all of them, a VM the named (or the `vm: true`) ones."""
        if names is not None:
            return [self.feature(n) for n in names]
        if role == "fm":
            return list(self.features)
        return [f for f in self.features if f.vm]

    def sequence_sources(self) -> list[str]:
        return sorted({f.source for f in self.features if f.kind is FeatureKind.sequence and f.source})

    def columns(self) -> list[str]:
        """Columns a reader needs from the log: core, labels, and non-derived features."""
        wanted = list(CORE_COLUMNS) + [t for t in self.tasks if t != "click"]
        wanted += [f.name for f in self.features if f.kind is not FeatureKind.sequence]
        wanted += self.sequence_sources()
        return list(dict.fromkeys(wanted))

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> DatasetSpec:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))


def is_label(column: str, tasks: list[str]) -> bool:
    """Whether an event-log column is a label: click, conversion, a task, or any `label_*` column."""
    if column.endswith("_delay_s"):
        return False  # a label's delay, not a label
    return column in ("click", "conversion") or column in tasks or column.startswith("label_")


def label_columns(spec: DatasetSpec, columns: list[str]) -> list[str]:
    """The label columns among `columns` (`is_label`)."""
    return [c for c in columns if is_label(c, spec.tasks)]


def binary_label(spec: DatasetSpec, column: str) -> bool:
    """Whether a label column must hold 0/1: click, conversion and every task a model trains on.

    Other `label_*` columns may be graded (MovieLens keeps its 1-5 rating as `label_rating`).
    """
    return column in ("click", "conversion") or column in spec.tasks


def expected_type(spec: DatasetSpec, column: str) -> pa.DataType | None:
    """The Arrow type an event log must have for `column` (None if the spec does not constrain it)."""
    if column in CORE_COLUMNS:
        return CORE_COLUMNS[column]
    if column in OPTIONAL_COLUMNS:
        return OPTIONAL_COLUMNS[column]
    if column in spec.tasks or column.startswith("label_"):
        return pa.float32()
    for feature in spec.features:
        if feature.name == column:
            return {
                FeatureKind.sparse: pa.int64(),
                FeatureKind.multi: pa.list_(pa.int64()),
                FeatureKind.dense: pa.float32(),
            }.get(feature.kind)
    return None
