"""Per-rank memory, load and communication of a sharding plan, from its shards.

The bytes follow what TorchRec's pooled embedding shardings exchange in one training step, per rank,
with a per-rank batch of B examples, a table's pooling factor P ids per example (over the F features
that read it; each feature is one pooled embedding of the table's width d, so d below stands for F x d
and the lengths for F x 4 bytes), fp32 embeddings and int64 ids, in a group of R ranks (all T ranks
in 1D, a group of G in 2D) with L ranks a host:

- input distribution (all-to-all of the sparse features): each rank sends its B x P ids (8 bytes) and B
  lengths (4 bytes) of a feature to the rank holding it -- to each column shard's rank (column-wise),
  bucketed by row over the shards (row-wise: the ids split, every shard gets the B lengths).
- forward output: table-/column-wise, a shard of width d sends the pooled B x d of every other rank's
  examples to it: (R - 1) B d x 4 bytes. Row-wise reduce-scatters partial sums of all R x B examples:
  (R - 1) B d x 4 bytes a rank. Table-row-wise reduce-scatters inside the host ((L - 1)/L x R B d x 4)
  then sends B d x 4 to each of the R / L ranks it serves.
- backward: the same bytes as the forward output, the other way (gradients of the pooled embeddings).
- data-parallel tables all-reduce their gradient every step: 2 (R - 1) / R x rows x d x 4 bytes.

Memory is the shards' weights and their row-wise AdaGrad state (one fp32 a row), next to the planner's
own estimate (which adds input/output buffers and kernel workspace). A 2D replica all-reduce moves
2 (M - 1) / M x (weights + state) a rank every K steps, ring all-reduce over the M replicas.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from torchrec.distributed.planner.types import ShardingOption
from torchrec.distributed.types import ShardingPlan

ID_BYTES, LENGTH_BYTES, VALUE_BYTES = 8, 4, 4
SHARDED = ("table_wise", "column_wise", "table_column_wise")


@dataclass(frozen=True)
class Shard:
    """One shard of a plan: its table, how the table is sharded, its rank and size."""

    table: str
    sharding_type: str
    rank: int
    rows: int
    cols: int
    pooling: float
    features: int = 1  # the features reading the table: each sends its own pooled embedding
    planner_bytes: int = 0  # the planner's storage estimate (HBM on CUDA, DDR on CPU)
    planner_seconds: float = 0.0  # the planner's perf estimate: compute + comms of a step


def shards_of(options: list[ShardingOption]) -> list[Shard]:
    """Every shard of a planner's chosen options."""
    out = []
    for option in options:
        pooling = float(sum(option.input_lengths)) if option.input_lengths else 1.0
        features = max(len(option.input_lengths or []), 1)
        for shard in option.shards:
            storage = shard.storage
            out.append(
                Shard(
                    table=option.name,
                    sharding_type=option.sharding_type,
                    rank=int(shard.rank),
                    rows=int(shard.size[0]),
                    cols=int(shard.size[1]),
                    pooling=pooling,
                    features=features,
                    planner_bytes=int((storage.hbm or storage.ddr) if storage else 0),
                    planner_seconds=float(shard.perf.total) if shard.perf else 0.0,
                )
            )
    return out


def shards_of_plan(
    plan: ShardingPlan,
    sizes: dict[str, tuple[int, int]],
    pooling: dict[str, float] | None = None,
    features: dict[str, int] | None = None,
) -> list[Shard]:
    """Every shard of a real run's plan (`fxrec.dist.planning.plan`, what `ShardedTrainer.plan` holds),
    so its costs come from the same formulas as a simulated plan's. `sizes`: {table: (rows, dim)};
    `pooling`: {table: ids per example} (1 when absent), e.g. measured on the run's batches;
    `features`: {table: features reading it} (1 when absent)."""
    pooling, features = pooling or {}, features or {}
    out = []
    for module_plan in plan.plan.values():
        for table, parameter in module_plan.items():  # type: ignore[union-attr]
            rows, cols = sizes[table]
            spec = parameter.sharding_spec
            if spec is None:  # data-parallel: the whole table on each of its ranks
                for rank in parameter.ranks or []:
                    out.append(
                        Shard(
                            table,
                            parameter.sharding_type,
                            rank,
                            rows,
                            cols,
                            pooling.get(table, 1.0),
                            features.get(table, 1),
                        )
                    )
                continue
            for meta in spec.shards:  # type: ignore[union-attr]
                rank = meta.placement.rank() if meta.placement is not None else 0
                out.append(
                    Shard(
                        table,
                        parameter.sharding_type,
                        int(rank),
                        int(meta.shard_sizes[0]),
                        int(meta.shard_sizes[1]),
                        pooling.get(table, 1.0),
                        features.get(table, 1),
                    )
                )
    return out


@dataclass
class RankCosts:
    """Per-rank arrays (index: rank within the group) of one plan at one per-rank batch."""

    memory: np.ndarray  # weights + row-wise AdaGrad state, bytes
    planner_memory: np.ndarray  # the planner's storage estimate, bytes
    load: np.ndarray  # the planner's perf estimate, seconds a step
    input_bytes: np.ndarray  # sent in the sparse features' all-to-all
    output_bytes: np.ndarray  # sent in the forward pooled-embedding all-to-all / reduce-scatter
    backward_bytes: np.ndarray  # sent in the backward one
    allreduce_bytes: np.ndarray  # data-parallel tables' gradient all-reduce, every step
    peers: np.ndarray  # distinct ranks each rank exchanges embeddings with

    @property
    def all_to_all_bytes(self) -> np.ndarray:
        return self.input_bytes + self.output_bytes + self.backward_bytes


def rank_costs(shards: list[Shard], group: int, batch: int, local_world: int | None = None) -> RankCosts:
    """Per-rank costs of `shards` planned over `group` ranks, each training `batch` examples a step."""
    local = min(local_world or group, group)
    zeros = lambda: np.zeros(group)  # noqa: E731
    c = RankCosts(zeros(), zeros(), zeros(), zeros(), zeros(), zeros(), zeros(), zeros())
    talks = np.zeros((group, group), dtype=bool)
    everyone = np.arange(group)
    by_table: dict[str, list[Shard]] = {}
    for s in shards:
        by_table.setdefault(s.table, []).append(s)
        c.memory[s.rank] += s.rows * s.cols * VALUE_BYTES + s.rows * 4
        c.planner_memory[s.rank] += s.planner_bytes
        c.load[s.rank] += s.planner_seconds
    for table_shards in by_table.values():
        kind, pooling, count = (
            table_shards[0].sharding_type,
            table_shards[0].pooling,
            table_shards[0].features,
        )
        ids = batch * (pooling * ID_BYTES + count * LENGTH_BYTES)
        if kind == "data_parallel":
            s = table_shards[0]
            c.allreduce_bytes += 2 * (group - 1) / group * s.rows * s.cols * VALUE_BYTES
            continue
        if kind in SHARDED:
            for s in table_shards:
                others = everyone != s.rank
                c.input_bytes[others] += ids
                c.output_bytes[s.rank] += (group - 1) * batch * s.cols * count * VALUE_BYTES
                c.backward_bytes[others] += batch * s.cols * count * VALUE_BYTES
                talks[s.rank, others] = talks[others, s.rank] = True
        elif kind == "row_wise":
            holders = sorted({s.rank for s in table_shards})
            n = len(holders)
            for s in table_shards:
                c.output_bytes[s.rank] += (group - 1) * batch * s.cols * count * VALUE_BYTES
                c.backward_bytes[s.rank] += (group - 1) * batch * s.cols * count * VALUE_BYTES
                talks[s.rank, everyone != s.rank] = talks[everyone != s.rank, s.rank] = True
            c.input_bytes += batch * pooling * ID_BYTES * (n - 1) / n + batch * count * LENGTH_BYTES * (n - 1)
        elif kind == "table_row_wise":
            holders = sorted({s.rank for s in table_shards})
            n = len(holders)
            hosts = max(group // local, 1)
            c.input_bytes += batch * pooling * ID_BYTES * (n - 1) / n + batch * count * LENGTH_BYTES * (n - 1)
            for s in table_shards:
                inside = (n - 1) / n * group * batch * s.cols * count * VALUE_BYTES
                across = hosts * batch * s.cols * count * VALUE_BYTES
                c.output_bytes[s.rank] += inside + across
                c.backward_bytes[s.rank] += inside + across
                served = everyone[everyone % local == s.rank % local]
                for peer in holders + list(served):
                    if peer != s.rank:
                        talks[s.rank, peer] = talks[peer, s.rank] = True
        else:  # grid and anything newer: counted as row-wise, the closest
            for s in table_shards:
                c.output_bytes[s.rank] += 2 * (group - 1) * batch * s.cols * count * VALUE_BYTES
    c.peers = talks.sum(axis=1).astype(float)
    return c


@dataclass
class LayoutSummary:
    """One row of `fxrec plan`: a layout (1D, or 2D with groups of G) at T ranks."""

    ranks: int
    layout: str  # "1D" or "2D/G"
    group: int  # ranks an all-to-all spans
    replicas: int  # M: copies of every shard (1 in 1D)
    sync_every: int  # K
    peers: float  # ranks each rank exchanges embeddings with (mean)
    all_to_all_bytes: float  # per rank per step (max over ranks): input + forward + backward
    message_bytes: float  # forward output bytes per peer (mean over ranks)
    dp_allreduce_bytes: float  # data-parallel tables' gradient all-reduce, per rank per step
    replica_allreduce_bytes: float  # 2D: weights + state all-reduce per rank per sync (0 in 1D)
    replica_allreduce_per_step: float  # the same, averaged over the K steps
    imbalance: float  # planner's estimated max / mean step time over ranks
    memory_bytes: float  # weights + row-wise AdaGrad state, max over ranks
    planner_memory_bytes: float  # the planner's storage estimate, max over ranks
    sharding_types: dict[str, int]  # tables per sharding type
    examples_per_step: int  # the whole cluster's global batch

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    shards: list[Shard],
    ranks: int,
    group: int,
    batch: int,
    sync_every: int = 1,
    local_world: int | None = None,
) -> LayoutSummary:
    """A layout's row: `shards` planned over `group` ranks, replicated ranks / group times."""
    costs = rank_costs(shards, group, batch, local_world)
    replicas = ranks // group
    peers = np.maximum(costs.peers, 1)
    replica = 2 * (replicas - 1) / replicas * float(costs.memory.max()) if replicas > 1 else 0.0
    types: dict[str, int] = {}
    for table in {s.table: s.sharding_type for s in shards}.items():
        types[table[1]] = types.get(table[1], 0) + 1
    load = costs.load
    return LayoutSummary(
        ranks=ranks,
        layout="1D" if replicas == 1 else f"2D/{group}",
        group=group,
        replicas=replicas,
        sync_every=sync_every,
        peers=float(costs.peers.mean()),
        all_to_all_bytes=float(costs.all_to_all_bytes.max()),
        message_bytes=float((costs.output_bytes / peers).mean()),
        dp_allreduce_bytes=float(costs.allreduce_bytes.max()),
        replica_allreduce_bytes=replica,
        replica_allreduce_per_step=replica / sync_every,
        imbalance=float(load.max() / load.mean()) if load.mean() > 0 else 1.0,
        memory_bytes=float(costs.memory.max()),
        planner_memory_bytes=float(costs.planner_memory.max()),
        sharding_types=types,
        examples_per_step=ranks * batch,
    )
