"""Jagged-sequence plumbing for the sequence-aware interactions.

A history batch is `values (N, ...)` plus `offsets (B + 1,)`. Kernels that need rectangular blocks get
them from a `JaggedPlan`: examples are grouped into buckets by length (powers of two), and each bucket
is padded only to its own longest member, never to the batch max. Empty examples fall in no bucket, so
they cost nothing. One plan is built per forward and reused by every layer, since the lengths don't change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Bucket:
    """Examples whose lengths round up to the same power of two.

    rows:  (Bb,) example indices
    index: (Bb, Lb) row of `values` for each slot; padded slots point at row 0 and are masked
    mask:  (Bb, Lb) True where the slot holds a real entry
    flat:  (n_valid,) index[mask], i.e. the rows of `values` this bucket owns, in order
    """

    rows: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor
    flat: torch.Tensor


@dataclass
class JaggedPlan:
    """Lengths, per-entry example ids and positions, and the length buckets of one jagged batch.

    Example::

        plan = JaggedPlan.from_offsets(torch.tensor([0, 3, 3, 4]))
        plan.positions  # tensor([0, 1, 2, 0]); example 1 is empty and sits in no bucket
    """

    offsets: torch.Tensor
    lengths: torch.Tensor
    batch_ids: torch.Tensor
    positions: torch.Tensor
    buckets: list[Bucket]
    _inverse: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.lengths.numel())

    @property
    def total(self) -> int:
        return int(self.batch_ids.numel())

    @classmethod
    def from_offsets(cls, offsets: torch.Tensor, min_bucket: int = 16) -> JaggedPlan:
        offsets = offsets.long()
        lengths = offsets[1:] - offsets[:-1]
        batch = lengths.numel()
        batch_ids = torch.repeat_interleave(torch.arange(batch, device=offsets.device), lengths)
        positions = torch.arange(batch_ids.numel(), device=offsets.device) - offsets[:-1][batch_ids]
        buckets: list[Bucket] = []
        nonempty = lengths > 0
        if bool(nonempty.any()):
            # Bucket key: the length rounded up to a power of two (at least min_bucket), so padding
            # wastes under half of any bucket and short histories share one block.
            keys = torch.clamp(lengths, min=min_bucket)
            keys = torch.pow(2, torch.ceil(torch.log2(keys.double()))).long()
            for key in torch.unique(keys[nonempty]).tolist():
                rows = torch.nonzero(nonempty & (keys == key)).flatten()
                row_len = lengths[rows]
                slots = torch.arange(int(row_len.max()), device=offsets.device)
                mask = slots[None, :] < row_len[:, None]
                index = torch.where(mask, offsets[rows][:, None] + slots[None, :], 0)
                buckets.append(Bucket(rows=rows, index=index, mask=mask, flat=index[mask]))
        return cls(
            offsets=offsets, lengths=lengths, batch_ids=batch_ids, positions=positions, buckets=buckets
        )

    def pad(self, x: torch.Tensor, bucket: Bucket) -> torch.Tensor:
        """(N, *rest) -> (Bb, Lb, *rest), zeros in the padded slots."""
        block = x[bucket.index]
        mask = bucket.mask.reshape(*bucket.mask.shape, *([1] * (x.dim() - 1)))
        return torch.where(mask, block, torch.zeros((), dtype=x.dtype, device=x.device))

    def gather(self, x: torch.Tensor, bucket: Bucket) -> torch.Tensor:
        """(N, *rest) -> (Bb, Lb, *rest), padded slots holding row 0 (for kernels that mask them anyway)."""
        return x[bucket.index]

    def unpad(self, parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Per-bucket blocks (Bb, Lb, *rest) back to jagged values (N, *rest); inverse of `pad`."""
        if not parts:
            return like.new_zeros((self.total, *like.shape[1:]))
        values = torch.cat([p[b.mask] for p, b in zip(parts, self.buckets, strict=True)])
        # Buckets cover every row exactly once, so one inverse permutation restores jagged order.
        return values[self._inverse_order()]

    def _inverse_order(self) -> torch.Tensor:
        if self._inverse is None:
            flat = torch.cat([b.flat for b in self.buckets])
            order = torch.arange(flat.numel(), device=flat.device)
            self._inverse = torch.empty_like(flat).scatter_(0, flat, order)
        return self._inverse


def jagged_prepend(
    prefix: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Put `prefix (B, c, d)` in front of each example's entries of `values (N, d)`.

    Returns (values (N + B*c, d), offsets (B + 1,), is_prefix (N + B*c,) bool).
    """
    batch, c, _ = prefix.shape
    lengths = offsets[1:] - offsets[:-1]
    new_offsets = offsets + c * torch.arange(batch + 1, device=offsets.device)
    prefix_rows = (new_offsets[:-1][:, None] + torch.arange(c, device=offsets.device)[None, :]).flatten()
    batch_ids = torch.repeat_interleave(torch.arange(batch, device=offsets.device), lengths)
    value_rows = torch.arange(values.shape[0], device=offsets.device) + c * (batch_ids + 1)
    rows = torch.cat([prefix_rows, value_rows])
    src = torch.cat([prefix.reshape(batch * c, -1), values])
    out = src.new_zeros(src.shape).index_copy(0, rows, src)
    is_prefix = torch.zeros(out.shape[0], dtype=torch.bool, device=offsets.device)
    is_prefix[prefix_rows] = True
    return out, new_offsets, is_prefix


def jagged_first(values: torch.Tensor, offsets: torch.Tensor, k: int) -> torch.Tensor:
    """The first k entries of each example, (B, k, d); every example must have at least k."""
    rows = offsets[:-1][:, None] + torch.arange(k, device=offsets.device)[None, :]
    return values[rows]


def jagged_last(values: torch.Tensor, offsets: torch.Tensor, k: int, skip_first: int = 0) -> torch.Tensor:
    """The k most recent entries of each example, (B, k, d), newest in slot k-1.

    Entries are oldest-first, so these are the last k rows of each segment; slots an example cannot
    fill (short or empty history, or rows among the first `skip_first`, e.g. CLS tokens) are zero.
    """
    slots = torch.arange(k, device=offsets.device)
    rows = offsets[1:][:, None] - k + slots[None, :]
    valid = rows >= (offsets[:-1] + skip_first)[:, None]
    if values.shape[0] == 0:
        return values.new_zeros(rows.shape[0], k, values.shape[-1])
    gathered = values[rows.clamp(min=0)]
    return torch.where(valid[..., None], gathered, torch.zeros((), dtype=values.dtype))


def jagged_select(
    mask: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, ages: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keep the entries where `mask (N,)` is True; returns (values, offsets, ages), order preserved."""
    batch = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    batch_ids = torch.repeat_interleave(torch.arange(batch, device=offsets.device), lengths)
    kept = torch.zeros(batch, dtype=torch.long, device=offsets.device).index_add_(0, batch_ids, mask.long())
    new_offsets = torch.cat([offsets.new_zeros(1), torch.cumsum(kept, 0)])
    return values[mask], new_offsets, (ages[mask] if ages is not None else None)
