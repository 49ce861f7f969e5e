"""Channel inputs: what a transfer channel feeds a VM besides its features, typed and row-aligned.

A VM's transfer channel reads FM outputs per event (a user embedding, a target-aware embedding, the
FM's logits, a sequence of LoopFM codes). Offline they are joined onto an `EventFrame` (in
`frame.inputs`, keyed by the channel's `input_key`) and cut into batches with the frame's rows; online
the scorer builds the same types for a request's candidates. Each type knows how to follow a row
selection (`select`) and a device move (`to`), so frames and batches carry any channel's inputs
without knowing which channel they belong to.

    VectorInput(values (B, d), found (B,))       one vector per event, found = 1.0 where the FM had one
    LogitInput({task: (B,)}, found (B,))         the FM's logits per task
    JaggedInput(offsets (B+1,), values (N, c))   a variable-length sequence per event
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch


@dataclass(frozen=True)
class Rows:
    """A selection of a frame's rows: `pick` selects per-event tensors; `jagged(offsets)` gives the
    chosen rows' lengths and the selector (slice or index tensor) of their flat values."""

    pick: Callable[[torch.Tensor], torch.Tensor]
    jagged: Callable[[torch.Tensor], tuple[torch.Tensor, slice | torch.Tensor]]


class ChannelInput:
    """Base of the typed inputs: a row selection and a device move give another input of the same type."""

    def select(self, rows: Rows) -> Self:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Self:
        raise NotImplementedError


@dataclass(frozen=True)
class VectorInput(ChannelInput):
    values: torch.Tensor  # (B, d) float32
    found: torch.Tensor  # (B,) float32, 1.0 where the FM had a vector for the event

    def select(self, rows: Rows) -> VectorInput:
        return VectorInput(rows.pick(self.values), rows.pick(self.found))

    def to(self, device: torch.device | str) -> VectorInput:
        return VectorInput(self.values.to(device), self.found.to(device))

    @classmethod
    def repeat(cls, vector: np.ndarray | None, rows: int, dim: int) -> VectorInput:
        """One vector (d,) shared by `rows` candidates (zeros, not found, when None)."""
        if vector is None:
            return cls(torch.zeros(rows, dim), torch.zeros(rows))
        values = np.array(np.broadcast_to(vector, (rows, len(vector))), dtype=np.float32, copy=True)
        return cls(torch.from_numpy(values), torch.ones(rows))


@dataclass(frozen=True)
class LogitInput(ChannelInput):
    logits: dict[str, torch.Tensor]  # {task: (B,) float32}
    found: torch.Tensor  # (B,) float32

    def select(self, rows: Rows) -> LogitInput:
        return LogitInput({t: rows.pick(v) for t, v in self.logits.items()}, rows.pick(self.found))

    def to(self, device: torch.device | str) -> LogitInput:
        return LogitInput({t: v.to(device) for t, v in self.logits.items()}, self.found.to(device))


@dataclass(frozen=True)
class JaggedInput(ChannelInput):
    offsets: torch.Tensor  # (B+1,) int64
    values: torch.Tensor  # (N, ...) the rows' entries, row after row

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def row(self, index: int) -> torch.Tensor:
        return self.values[int(self.offsets[index]) : int(self.offsets[index + 1])]

    def select(self, rows: Rows) -> JaggedInput:
        lengths, selector = rows.jagged(self.offsets)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
        return JaggedInput(offsets, self.values[selector])

    def to(self, device: torch.device | str) -> JaggedInput:
        return JaggedInput(self.offsets.to(device), self.values.to(device))

    @classmethod
    def repeat(cls, sequence: np.ndarray, rows: int) -> JaggedInput:
        """One sequence (L, ...) shared by `rows` candidates."""
        return cls(
            torch.arange(rows + 1, dtype=torch.int64) * len(sequence),
            torch.from_numpy(np.tile(sequence, (rows,) + (1,) * (sequence.ndim - 1))),
        )
