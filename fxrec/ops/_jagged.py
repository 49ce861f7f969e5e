"""The one home of jagged-layout plumbing: input checks, the layout/planner `JaggedPlan`, and the small
gather/scatter helpers the sequence arches use (CLS prepend, first/last K, per-type selection).

Layout everywhere: `values` (sum_len, H, D) or (sum_len, d) rows, sequence b owns rows
offsets[b]:offsets[b+1], offsets (B + 1,) int64 starting at 0, every length <= max_len.

Kernels live in `fxrec.ops`; the interactions depend on this module, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


class JaggedPlan:
    """One jagged batch's layout, with everything derived from its offsets computed once and reused.

    Build one per batch and pass it as `offsets` to every `fxrec.ops` call over that batch: the cpu
    backend's length buckets (`chunks`) are then planned once, not once per layer. A bare offsets tensor
    works too (a throwaway plan is made for it).

    Example::

        plan = JaggedPlan(torch.tensor([0, 3, 3, 4]))
        plan.positions  # tensor([0, 1, 2, 0]); example 1 is empty
        plan.max_len    # 3
    """

    def __init__(self, offsets: torch.Tensor):
        self.offsets = offsets
        self._chunks: dict[tuple, list[Chunk]] = {}

    @cached_property
    def lengths(self) -> torch.Tensor:
        """(B,) int64."""
        return (self.offsets[1:] - self.offsets[:-1]).long()

    @property
    def batch_size(self) -> int:
        return int(self.offsets.numel()) - 1

    @cached_property
    def max_len(self) -> int:
        """The longest sequence (0 for an empty or all-empty batch): a valid `max_len` for every op."""
        return int(self.lengths.max()) if self.batch_size > 0 else 0

    @cached_property
    def batch_ids(self) -> torch.Tensor:
        """(sum_len,) the example each row belongs to."""
        return torch.repeat_interleave(torch.arange(self.batch_size, device=self.offsets.device), self.lengths)

    @cached_property
    def positions(self) -> torch.Tensor:
        """(sum_len,) each row's position within its own sequence, 0-based."""
        rows = torch.arange(self.batch_ids.numel(), device=self.offsets.device)
        return rows - self.offsets[:-1].long()[self.batch_ids]

    def chunks(
        self,
        *,
        quadratic: bool,
        row_bytes: int,
        call_overhead: float = 32768.0,
        chunk_bytes: int | None = None,
    ) -> list[Chunk]:
        """`plan_chunks` of these offsets, memoised per argument set (see `plan_chunks`)."""
        key = (quadratic, row_bytes, call_overhead, chunk_bytes)
        if key not in self._chunks:
            self._chunks[key] = plan_chunks(
                self.offsets, quadratic=quadratic, row_bytes=row_bytes, call_overhead=call_overhead,
                chunk_bytes=chunk_bytes,
            )
        return self._chunks[key]


def as_plan(offsets: torch.Tensor | JaggedPlan) -> JaggedPlan:
    return offsets if isinstance(offsets, JaggedPlan) else JaggedPlan(offsets)


def check_jagged(name: str, values: torch.Tensor, plan: JaggedPlan, max_len: int) -> None:
    """Raise a specific ValueError if `values`/`offsets` break the jagged contract."""
    offsets = plan.offsets
    if values.dim() != 3:
        raise ValueError(f"{name} must be (sum_len, H, D) or (sum_len, D); got shape {tuple(values.shape)}")
    if offsets.dim() != 1 or offsets.dtype not in (torch.int64, torch.int32) or offsets.numel() < 1:
        raise ValueError(
            f"offsets must be a 1-D int64 tensor of size B + 1; got {offsets.dtype} {tuple(offsets.shape)}"
        )
    if offsets.device.type == "cpu":  # the check needs a host sync; CUDA callers are trusted
        first, last = int(offsets[0]), int(offsets[-1])
        if first != 0 or last != values.shape[0]:
            raise ValueError(f"offsets must run from 0 to {name}.shape[0]={values.shape[0]}; got {first}..{last}")
        lengths = plan.lengths
        if offsets.numel() > 1 and (int(lengths.min()) < 0 or plan.max_len > max_len):
            raise ValueError(
                f"sequence lengths must lie in [0, max_len={max_len}]; got {int(lengths.min())}..{plan.max_len}"
            )


@dataclass
class Chunk:
    """A group of sequences padded to one length, processed by one batched kernel call.

    seq_ids: (n,) which sequences; lengths: their lengths; padded_len: the common padded length L.
    rows: (n * L,) row of the jagged tensor for each padded position (padding repeats a real row of the
          same sequence so every gathered value is finite);
    valid: (n, L) True at real positions, None if no position is padding;
    contiguous: (first_row, last_row) when the chunk is a plain slice of the jagged tensor (no gather).
    """

    seq_ids: torch.Tensor
    lengths: torch.Tensor
    padded_len: int
    rows: torch.Tensor
    valid: torch.Tensor | None
    contiguous: tuple[int, int] | None

    @property
    def num_sequences(self) -> int:
        return int(self.seq_ids.numel())

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """(sum_len, H, D) -> (n, H, L, D), a strided view when the chunk is contiguous."""
        n, length = self.num_sequences, self.padded_len
        if self.contiguous is not None:
            block = values[self.contiguous[0] : self.contiguous[1]]
        else:
            block = values.index_select(0, self.rows)
        return block.view(n, length, values.shape[1], values.shape[2]).transpose(1, 2)

    def gather_zero_padded(self, values: torch.Tensor) -> torch.Tensor:
        """Like `gather` but padding positions are 0 (used for output gradients, which must not leak)."""
        block = self.gather(values)
        if self.valid is not None:  # valid is None for contiguous views, so this block is a fresh gather
            block.masked_fill_(~self.valid[:, None, :, None], 0)
        return block

    def scatter_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        """Write the real positions of `block` (n, H, L, D) into jagged `target` (sum_len, H, D)."""
        rows = block.transpose(1, 2).reshape(-1, block.shape[1], block.shape[3])
        if self.contiguous is not None:
            target[self.contiguous[0] : self.contiguous[1]] = rows
        elif self.valid is None:
            target.index_copy_(0, self.rows, rows)
        else:
            flat_valid = self.valid.reshape(-1)
            target.index_copy_(0, self.rows[flat_valid], rows[flat_valid])


def plan_chunks(
    offsets: torch.Tensor,
    *,
    quadratic: bool,
    row_bytes: int,
    granularity: int = 16,
    call_overhead: float = 32768.0,
    chunk_bytes: int | None = None,
) -> list[Chunk]:
    """Group non-empty sequences into length buckets, then split buckets into memory-bounded chunks.

    Lengths are rounded up to `granularity`; a dynamic programme over the distinct rounded lengths picks
    bucket boundaries that minimise sum(n_b * cost(L_b)) + call_overhead per bucket, with cost(L) = L^2 for
    self-attention (`quadratic`) and L otherwise (the unit is a per-head score element). Buckets are
    then cut so one gathered (n, H, L, D) tensor stays under `chunk_bytes` (`row_bytes` = H * D * itemsize),
    which bounds the padded temporaries however large the batch is. By default a chunk holds about 1/16
    of the batch (between 256 KiB and 16 MiB per tensor): the ~10 per-chunk temporaries of the backward
    then add well under one jagged tensor to the peak, while chunks stay large enough for fast matmuls.
    """
    lengths = (offsets[1:] - offsets[:-1]).cpu()
    if chunk_bytes is None:
        chunk_bytes = min(16 << 20, max(256 << 10, int(lengths.sum()) * row_bytes // 16))
    starts = offsets[:-1].cpu()
    nonempty = torch.nonzero(lengths > 0).flatten()
    if nonempty.numel() == 0:
        return []
    order = nonempty[torch.argsort(lengths[nonempty], stable=True)]
    sorted_lengths = lengths[order]
    rounded = ((sorted_lengths + granularity - 1) // granularity) * granularity
    # a bucket never pads past its longest member: the last bucket uses the true max, not the rounded one
    distinct, counts = torch.unique_consecutive(rounded, return_counts=True)
    distinct_list, counts_list = distinct.tolist(), counts.tolist()
    groups = len(distinct_list)
    prefix = [0]
    for count in counts_list:
        prefix.append(prefix[-1] + count)

    def cost(length: int) -> float:
        return float(length * length) if quadratic else float(length)

    best = [0.0] + [float("inf")] * groups
    cut = [0] * (groups + 1)
    for end in range(1, groups + 1):
        unit = cost(distinct_list[end - 1])
        for begin in range(end):
            value = best[begin] + (prefix[end] - prefix[begin]) * unit + call_overhead
            if value < best[end]:
                best[end], cut[end] = value, begin
    bounds = []
    end = groups
    while end > 0:
        bounds.append((prefix[cut[end]], prefix[end]))
        end = cut[end]
    bounds.reverse()

    chunks: list[Chunk] = []
    for first, last in bounds:
        ids = order[first:last]
        padded_len = int(sorted_lengths[last - 1])
        per_chunk = max(1, chunk_bytes // max(1, padded_len * row_bytes))
        # within a bucket keep the original order so full-length runs stay contiguous slices
        ids = torch.sort(ids).values
        for piece in torch.split(ids, per_chunk):
            chunks.append(_make_chunk(piece, lengths[piece], starts[piece], padded_len, offsets.device))
    return chunks


def _make_chunk(
    seq_ids: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, padded_len: int, device: torch.device
) -> Chunk:
    full = bool((lengths == padded_len).all())
    consecutive = bool((seq_ids[1:] - seq_ids[:-1] == 1).all()) if seq_ids.numel() > 1 else True
    positions = torch.arange(padded_len)
    rows = starts[:, None] + torch.minimum(positions[None, :], lengths[:, None] - 1)
    valid = None if full else positions[None, :] < lengths[:, None]
    contiguous = None
    if full and consecutive:
        first = int(starts[0])
        contiguous = (first, first + int(seq_ids.numel()) * padded_len)
    return Chunk(
        seq_ids=seq_ids.to(device),
        lengths=lengths.to(device),
        padded_len=padded_len,
        rows=rows.reshape(-1).to(device),
        valid=None if valid is None else valid.to(device),
        contiguous=contiguous,
    )


# ---- small gather/scatter helpers of the sequence arches (no kernels) ----------------------------------


def jagged_prepend(
    prefix: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Put `prefix (B, c, d)` in front of each example's entries of `values (N, d)`.

    Returns (values (N + B*c, d), offsets (B + 1,), is_prefix (N + B*c,) bool).
    """
    batch, c, _ = prefix.shape
    new_offsets = offsets + c * torch.arange(batch + 1, device=offsets.device)
    prefix_rows = (new_offsets[:-1][:, None] + torch.arange(c, device=offsets.device)[None, :]).flatten()
    batch_ids = JaggedPlan(offsets).batch_ids
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
    plan = JaggedPlan(offsets)
    batch, batch_ids = plan.batch_size, plan.batch_ids
    kept = torch.zeros(batch, dtype=torch.long, device=offsets.device).index_add_(0, batch_ids, mask.long())
    new_offsets = torch.cat([offsets.new_zeros(1), torch.cumsum(kept, 0)])
    return values[mask], new_offsets, (ages[mask] if ages is not None else None)
