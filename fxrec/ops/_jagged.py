"""The one home of jagged-layout plumbing: input checks, the layout/planner `JaggedPlan`, and the small
gather/scatter helpers the sequence arches use (CLS prepend, first/last K, per-type selection).

Layout everywhere: `values` (sum_len, H, D) or (sum_len, d) rows, sequence b owns rows
offsets[b]:offsets[b+1], offsets (B + 1,) int64 starting at 0, every length <= max_len.

Kernels live in `fxrec.ops`; the interactions depend on this module, never the reverse.
"""

from __future__ import annotations

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
        return torch.repeat_interleave(
            torch.arange(self.batch_size, device=self.offsets.device), self.lengths
        )

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
        sequence_bytes: int = 0,
    ) -> list[Chunk]:
        """`plan_chunks` of these offsets, memoised per argument set (see `plan_chunks`)."""
        key = (quadratic, row_bytes, call_overhead, chunk_bytes, sequence_bytes)
        if key not in self._chunks:
            self._chunks[key] = plan_chunks(
                self.offsets,
                quadratic=quadratic,
                row_bytes=row_bytes,
                call_overhead=call_overhead,
                chunk_bytes=chunk_bytes,
                sequence_bytes=sequence_bytes,
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
            raise ValueError(
                f"offsets must run from 0 to {name}.shape[0]={values.shape[0]}; got {first}..{last}"
            )
        lengths = plan.lengths
        if offsets.numel() > 1 and (int(lengths.min()) < 0 or plan.max_len > max_len):
            raise ValueError(
                f"sequence lengths must lie in [0, max_len={max_len}]; got {int(lengths.min())}..{plan.max_len}"
            )


class PaddedRows:
    """Every chunk of one plan laid end to end: for each padded position p (P of them in all), the jagged
    row it reads, whether it is real, and the row it writes. Built with a dozen vectorised ops per plan;
    each `Chunk` is a range [first, first + n * L) of it, so chunks and their pieces are views.

    rows: (P,) row read at p (padding repeats the sequence's last real row, so gathers stay finite);
    valid: (P,) True at real positions; spare_rows: (P,) like rows, but padding points at row sum_len, the
    spare row of a (sum_len + 1)-row target (a whole padded block is then written with one index_copy_).
    """

    def __init__(self, rows: torch.Tensor, valid: torch.Tensor, total_rows: int):
        self.rows, self.valid, self.total_rows = rows, valid, total_rows
        self._spare_rows: torch.Tensor | None = None
        self._key_masks: dict[torch.dtype, torch.Tensor] = {}

    @property
    def spare_rows(self) -> torch.Tensor:
        if self._spare_rows is None:  # only backward passes write padded blocks whole
            self._spare_rows = torch.where(self.valid, self.rows, self.total_rows)
        return self._spare_rows

    def key_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(P,) additive mask, 0 at real positions and -inf at padding (the flash kernel's attn_mask)."""
        if dtype not in self._key_masks:
            zero, minus_inf = (
                torch.tensor(x, dtype=dtype, device=self.valid.device) for x in (0.0, float("-inf"))
            )
            self._key_masks[dtype] = torch.where(self.valid, zero, minus_inf)
        return self._key_masks[dtype]


class Chunk:
    """A group of sequences padded to one length, processed by one batched kernel call.

    seq_ids: (n,) which sequences; lengths: their lengths; padded_len: the common padded length L;
    padded: the plan's `PaddedRows`, of which this chunk holds positions [first, first + n * L);
    has_padding: False when every member is L long (no mask, no zeroing);
    contiguous: (first_row, last_row) when the chunk is a plain slice of the jagged tensor (no gather).
    """

    def __init__(
        self,
        seq_ids: torch.Tensor,
        lengths: torch.Tensor,
        padded_len: int,
        padded: PaddedRows,
        first: int,
        has_padding: bool,
        contiguous: tuple[int, int] | None,
    ):
        self.seq_ids, self.lengths, self.padded_len, self.padded = seq_ids, lengths, padded_len, padded
        self.n = int(seq_ids.numel())
        self.first, self.last = first, first + self.n * padded_len
        self.has_padding, self.contiguous = has_padding, contiguous
        self.rows = padded.rows[self.first : self.last]  # (n * L,) jagged row of each padded position
        self._pieces: dict[int, list[tuple[Chunk, slice]]] = {}
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def num_sequences(self) -> int:
        return self.n

    @property
    def valid(self) -> torch.Tensor | None:
        """(n, L) True at real positions, None if no position is padding."""
        return self.padded.valid[self.first : self.last].view(self.n, -1) if self.has_padding else None

    def key_mask(self, dtype: torch.dtype) -> torch.Tensor | None:
        """(n, 1, 1, L) additive key-padding mask (0 / -inf) for the flash kernel, None without padding."""
        if not self.has_padding:
            return None
        return self.padded.key_mask(dtype)[self.first : self.last].view(self.n, 1, 1, self.padded_len)

    def _cached(self, name: str) -> torch.Tensor:
        """Index tensors derived from the plan, built on first use and kept with the chunk."""
        if name not in self._cache:
            valid = self.padded.valid[self.first : self.last]
            if name == "real":  # positions of real rows in the padded block
                self._cache[name] = valid.nonzero().flatten()
            elif name == "real_rows":
                self._cache[name] = self.rows[self._cached("real")]
            elif name == "padding":
                self._cache[name] = (~valid).nonzero().flatten()
            else:  # "spare_rows"
                self._cache[name] = self.padded.spare_rows[self.first : self.last]
        return self._cache[name]

    def _as_blocks(self, rows: torch.Tensor) -> torch.Tensor:
        """(n * L, H, D) contiguous rows -> (n, H, L, D) view, in one call."""
        heads, dim = rows.shape[1], rows.shape[2]
        return rows.as_strided(
            (self.n, heads, self.padded_len, dim), (self.padded_len * heads * dim, dim, heads * dim, 1)
        )

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """(sum_len, H, D) -> (n, H, L, D), a strided view when the chunk is contiguous."""
        if self.contiguous is not None:
            block = values[self.contiguous[0] : self.contiguous[1]]
            return block.view(self.n, self.padded_len, values.shape[1], values.shape[2]).transpose(1, 2)
        return self._as_blocks(values.index_select(0, self.rows))

    def gather_zero_padded(self, values: torch.Tensor) -> torch.Tensor:
        """Like `gather` but padding positions are 0 (used for output gradients, which must not leak)."""
        if not self.has_padding:
            return self.gather(values)
        rows = values.index_select(0, self.rows)
        rows.index_fill_(0, self._cached("padding"), 0)  # much cheaper than a broadcast masked_fill_
        return self._as_blocks(rows)

    def scatter_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        """Write the real positions of `block` (n, H, L, D) into jagged `target` (sum_len, H, D)."""
        rows = block.transpose(1, 2).reshape(-1, block.shape[1], block.shape[3])
        if self.contiguous is not None:
            target[self.contiguous[0] : self.contiguous[1]] = rows
        elif not self.has_padding:
            target.index_copy_(0, self.rows, rows)
        else:
            target.index_copy_(0, self._cached("real_rows"), rows.index_select(0, self._cached("real")))

    def scatter_spare_(self, target: torch.Tensor, block: torch.Tensor) -> None:
        """`scatter_` into a target with one spare row at the end (sum_len + 1, H, D): padding lands there."""
        rows = block.transpose(1, 2).reshape(-1, block.shape[1], block.shape[3])
        if self.contiguous is not None:
            target[self.contiguous[0] : self.contiguous[1]] = rows
        else:
            target.index_copy_(0, self._cached("spare_rows") if self.has_padding else self.rows, rows)

    def split(self, max_sequences: int) -> list[tuple[Chunk, slice]]:
        """This chunk cut into as few pieces of at most `max_sequences` sequences as possible, of near-equal
        size (views), each with its slice of the chunk's sequences."""
        if max_sequences >= self.n:
            return [(self, slice(0, self.n))]
        if max_sequences not in self._pieces:
            count = -(-self.n // max_sequences)
            full = (self.lengths == self.padded_len).tolist()
            bounds = [self.n * i // count for i in range(count + 1)]
            self._pieces[max_sequences] = [
                (self.piece(begin, end, all(full[begin:end])), slice(begin, end))
                for begin, end in zip(bounds[:-1], bounds[1:], strict=True)
            ]
        return self._pieces[max_sequences]

    def piece(self, begin: int, end: int, full: bool, contiguous: tuple[int, int] | None = None) -> Chunk:
        """Sequences begin:end of this chunk; `full` if all are L long, `contiguous` if one jagged slice."""
        length = self.padded_len
        if self.contiguous is not None:
            contiguous = (self.contiguous[0] + begin * length, self.contiguous[0] + end * length)
        return Chunk(
            self.seq_ids[begin:end],
            self.lengths[begin:end],
            length,
            self.padded,
            self.first + begin * length,
            self.has_padding and not full,
            contiguous,
        )


def default_granularity(max_len: int) -> int:
    """Bucket lengths are rounded up to this: 8, or coarser for long sequences so the bucket dynamic
    programme stays at <= 64 distinct lengths (its cost is quadratic in them)."""
    return max(8, -(-max_len // 64 // 8) * 8)


def plan_chunks(
    offsets: torch.Tensor,
    *,
    quadratic: bool,
    row_bytes: int,
    granularity: int | None = None,
    call_overhead: float = 32768.0,
    chunk_bytes: int | None = None,
    sequence_bytes: int = 0,
) -> list[Chunk]:
    """Group non-empty sequences into length buckets, then split buckets into memory-bounded chunks.

    Lengths are rounded up to `granularity` (default `default_granularity(max_len)`); a dynamic programme
    over the distinct rounded lengths picks bucket boundaries that minimise
    sum(n_b * cost(L_b)) + call_overhead per bucket, with cost(L) = L^2 for self-attention (`quadratic`)
    and L otherwise (the unit is a per-head score element). Buckets are then cut so one gathered
    (n, H, L, D) tensor stays under `chunk_bytes` (`row_bytes` = H * D * itemsize), which bounds the
    padded temporaries however large the batch is. By default a chunk holds about 1/16 of the batch
    (between 256 KiB and 16 MiB per tensor). `sequence_bytes` adds a per-sequence cost to that budget, for
    ops that also gather something per sequence (GDPA's per-example keys and values).
    """
    lengths = (offsets[1:] - offsets[:-1]).cpu()
    length_list, start_list = lengths.tolist(), offsets[:-1].tolist()
    total_rows = int(offsets[-1]) if offsets.numel() else 0
    if chunk_bytes is None:
        chunk_bytes = min(16 << 20, max(256 << 10, total_rows * row_bytes // 16))
    order = sorted((i for i, length in enumerate(length_list) if length > 0), key=length_list.__getitem__)
    if not order:
        return []
    if granularity is None:
        granularity = default_granularity(length_list[order[-1]])
    # distinct rounded lengths (ascending) and how many sequences round to each
    distinct_list: list[int] = []
    prefix = [0]
    for i in order:
        rounded = -(-length_list[i] // granularity) * granularity
        if distinct_list and distinct_list[-1] == rounded:
            prefix[-1] += 1
        else:
            distinct_list.append(rounded)
            prefix.append(prefix[-1] + 1)
    groups = len(distinct_list)

    best = [0.0] + [float("inf")] * groups
    cut = [0] * (groups + 1)
    for end in range(1, groups + 1):
        unit = float(distinct_list[end - 1]) ** (2 if quadratic else 1)
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

    # sequences bucket by bucket, within a bucket in their original order (full-length runs stay slices);
    # a bucket never pads past its longest member
    ordered: list[int] = []
    padded_lens: list[int] = []
    for first, last in bounds:
        members = sorted(order[first:last])
        ordered += members
        padded_lens += [length_list[order[last - 1]]] * len(members)
    device = offsets.device
    seq_ids = torch.tensor(ordered, dtype=torch.int64)
    seq_lengths = lengths[seq_ids]
    seq_padded = torch.tensor(padded_lens, dtype=torch.int64)
    seq_first = torch.cumsum(seq_padded, 0) - seq_padded  # where each sequence starts in the flat layout
    owner = torch.repeat_interleave(torch.arange(len(ordered)), seq_padded)  # (P,)
    position = torch.arange(owner.numel()) - seq_first[owner]
    owner_lengths = seq_lengths[owner]
    valid = position < owner_lengths
    rows = offsets[:-1].cpu()[seq_ids][owner] + torch.minimum(position, owner_lengths - 1)
    padded = PaddedRows(rows.to(device), valid.to(device), total_rows)
    seq_ids, seq_lengths = seq_ids.to(device), seq_lengths.to(device)

    chunks: list[Chunk] = []
    begin_seq = flat_first = 0
    for first, last in bounds:
        count = last - first
        padded_len = padded_lens[begin_seq]
        per_chunk = max(1, chunk_bytes // max(1, padded_len * row_bytes + sequence_bytes))
        for begin in range(0, count, per_chunk):
            end = min(count, begin + per_chunk)
            members = ordered[begin_seq + begin : begin_seq + end]
            full = all(length_list[i] == padded_len for i in members)
            contiguous = None
            if full and members[-1] - members[0] == len(members) - 1:
                contiguous = (start_list[members[0]], start_list[members[0]] + len(members) * padded_len)
            chunks.append(
                Chunk(
                    seq_ids[begin_seq + begin : begin_seq + end],
                    seq_lengths[begin_seq + begin : begin_seq + end],
                    padded_len,
                    padded,
                    flat_first + begin * padded_len,
                    not full,
                    contiguous,
                )
            )
        begin_seq += count
        flat_first += count * padded_len
    return chunks


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
