"""What an advertiser can target in fxrec's audience tools, and the columnar form a population takes.

An `AudienceSchema` names the targetable fields of a population:

- categorical fields (gender, country, region, device): one value per user, stored as int16 codes
  (the index of the value in the schema's list);
- numeric fields (age in years): one integer per user, targeted with ranges;
- segment namespaces (`interest` for the truth, one per data provider): many small yes/no segments per
  user, stored as a bitset (uint64 words) per user;
- surfaces (feed, stories, video): each user's impression count on each surface over the window.

`Columns` holds users in that form as numpy arrays: a population chunk, a sample, a shard of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml


@dataclass(frozen=True)
class AudienceSchema:
    categorical: dict[str, tuple[str, ...]]
    numeric: dict[str, tuple[int, int]]
    segments: dict[str, tuple[str, ...]]
    surfaces: tuple[str, ...]

    def words(self, namespace: str) -> int:
        """uint64 words per user for a segment namespace's bitset."""
        return max(1, (len(self.segments[namespace]) + 63) // 64)

    def fields(self) -> list[str]:
        return [*self.categorical, *self.numeric, *self.segments, "surface"]

    def save(self, path: Path) -> None:
        data = {
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            "numeric": {k: list(v) for k, v in self.numeric.items()},
            "segments": {k: list(v) for k, v in self.segments.items()},
            "surfaces": list(self.surfaces),
        }
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> AudienceSchema:
        data = yaml.safe_load(Path(path).read_text())
        return cls(
            categorical={k: tuple(map(str, v)) for k, v in data["categorical"].items()},
            numeric={k: (int(v[0]), int(v[1])) for k, v in data["numeric"].items()},
            segments={k: tuple(map(str, v)) for k, v in data["segments"].items()},
            surfaces=tuple(data["surfaces"]),
        )


def bits_column(namespace: str) -> str:
    return f"bits_{namespace}"


def impressions_column(surface: str) -> str:
    return f"imp_{surface}"


def pack_bits(flags: np.ndarray, words: int) -> np.ndarray:
    """[n, k] booleans as [n, words] uint64 bitsets (bit j of the row = flag j)."""
    n, k = flags.shape
    padded = np.zeros((n, words * 64), dtype=bool)
    padded[:, :k] = flags
    return np.packbits(padded, axis=1, bitorder="little").view(np.uint64).reshape(n, words)


def has_bit(bits: np.ndarray, index: int) -> np.ndarray:
    return ((bits[:, index >> 6] >> np.uint64(index & 63)) & np.uint64(1)).astype(bool)


@dataclass
class Columns:
    """Users as numpy arrays in the schema's layout (one row per user)."""

    user_id: np.ndarray  # int64
    categorical: dict[str, np.ndarray]  # int16 codes
    numeric: dict[str, np.ndarray]  # int16
    segments: dict[str, np.ndarray]  # [n, words] uint64
    impressions: np.ndarray  # [n, surfaces] int32
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. a sample's weights

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def total_impressions(self) -> np.ndarray:
        return self.impressions.sum(axis=1, dtype=np.int64)

    def take(self, rows: np.ndarray) -> Columns:
        return Columns(
            self.user_id[rows],
            {k: v[rows] for k, v in self.categorical.items()},
            {k: v[rows] for k, v in self.numeric.items()},
            {k: v[rows] for k, v in self.segments.items()},
            self.impressions[rows],
            {k: v[rows] for k, v in self.extra.items()},
        )

    @staticmethod
    def concat(parts: list[Columns]) -> Columns:
        first = parts[0]
        return Columns(
            np.concatenate([p.user_id for p in parts]),
            {k: np.concatenate([p.categorical[k] for p in parts]) for k in first.categorical},
            {k: np.concatenate([p.numeric[k] for p in parts]) for k in first.numeric},
            {k: np.concatenate([p.segments[k] for p in parts]) for k in first.segments},
            np.concatenate([p.impressions for p in parts]),
            {k: np.concatenate([p.extra[k] for p in parts]) for k in first.extra},
        )

    def nbytes(self) -> int:
        arrays = [self.user_id, self.impressions, *self.categorical.values(), *self.numeric.values()]
        arrays += [*self.segments.values(), *self.extra.values()]
        return int(sum(a.nbytes for a in arrays))

    def to_arrow(self, schema: AudienceSchema) -> pa.Table:
        data: dict[str, pa.Array] = {"user_id": pa.array(self.user_id)}
        for name in schema.categorical:
            data[name] = pa.array(self.categorical[name])
        for name in schema.numeric:
            data[name] = pa.array(self.numeric[name])
        for namespace in schema.segments:
            words = self.segments[namespace]
            width = words.shape[1] * 8
            data[bits_column(namespace)] = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), len(self), [None, pa.py_buffer(np.ascontiguousarray(words).tobytes())]
            )
        for s, surface in enumerate(schema.surfaces):
            data[impressions_column(surface)] = pa.array(self.impressions[:, s])
        return pa.table(data)

    @classmethod
    def from_arrow(cls, table: pa.Table, schema: AudienceSchema) -> Columns:
        table = table.combine_chunks()

        def numpy(name: str, dtype: type) -> np.ndarray:
            return table.column(name).to_numpy().astype(dtype, copy=False)

        segments = {}
        for namespace in schema.segments:
            chunk = table.column(bits_column(namespace)).chunk(0) if table.num_rows else None
            words = schema.words(namespace)
            if chunk is None:
                segments[namespace] = np.zeros((0, words), dtype=np.uint64)
                continue
            raw = np.frombuffer(chunk.buffers()[1], dtype=np.uint8)
            start = chunk.offset * words * 8
            segments[namespace] = (
                raw[start : start + len(chunk) * words * 8].view(np.uint64).reshape(-1, words).copy()
            )
        impressions = np.stack([numpy(impressions_column(s), np.int32) for s in schema.surfaces], axis=1)
        return cls(
            numpy("user_id", np.int64),
            {name: numpy(name, np.int16) for name in schema.categorical},
            {name: numpy(name, np.int16) for name in schema.numeric},
            segments,
            impressions.reshape(table.num_rows, len(schema.surfaces)),
        )
