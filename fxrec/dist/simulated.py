"""Plans for clusters fxrec users do not have yet: TorchRec's planner on a simulated topology.

`fxrec plan` asks TorchRec's `EmbeddingShardingPlanner` to shard a set of tables (up to 10^9 rows x
128 and beyond) over 64 to 1,024 simulated ranks -- no process group, no memory: the tables live on
PyTorch's meta device -- and reads off what a user needs before renting the cluster: per-rank memory,
the planner's estimated load imbalance, and the bytes each rank sends per step (`fxrec.dist.traffic`).

Two layouts are planned for each world size T:
- 1D: every table sharded over all T ranks (one all-to-all among T ranks).
- 2D with groups of G ranks (2D sparse parallelism): tables sharded within each group of G ranks and
  replicated across the M = T / G groups; all-to-alls stay inside a group, and every K steps each rank
  all-reduces its shards' weights and optimizer state with its M - 1 replicas.

Both plans use the same per-rank batch, so a 2D group trains G x batch examples per step, as it does
in DMPCollection (which is planned for the group's world size too).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.proposers import GreedyProposer
from torchrec.distributed.planner.types import ShardingOption
from torchrec.distributed.types import ModuleSharder

from fxrec.errors import InputError

GiB = 1 << 30
# Simulated devices: 80 GiB HBM (an H100), 8 ranks a host, TorchRec's default bandwidths.
HBM_GIB = 80.0
LOCAL_WORLD = 8


@dataclass(frozen=True)
class TableSpec:
    """One embedding table to plan: rows x dim, read with `pooling` ids per example on average."""

    name: str
    rows: int
    dim: int
    pooling: float = 1.0

    @property
    def bytes(self) -> int:
        return self.rows * self.dim * 4


# A ranking model's tables at the scale where one process no longer fits: one 10^9 x 128 table
# (user ids), two 10^8 (items), two 10^7 and three 10^6 (sparse attributes).
DEFAULT_TABLES = "1e9x128,1e8x128*2,1e7x128*2,1e6x64*3"

_TABLE = re.compile(r"^\s*([0-9.eE+]+)\s*x\s*(\d+)\s*(?:\*\s*(\d+))?\s*(?:@\s*([0-9.]+))?\s*$")


def parse_tables(text: str) -> list[TableSpec]:
    """`ROWSxDIM[*COUNT][@POOLING]`, comma-separated: `1e9x128,1e6x64*3@20` (InputError otherwise)."""
    tables: list[TableSpec] = []
    for part in text.split(","):
        match = _TABLE.match(part)
        if not match:
            raise InputError(f"table {part.strip()!r}: expected ROWSxDIM[*COUNT][@POOLING], e.g. 1e9x128*2@1")
        rows, dim = int(float(match[1])), int(match[2])
        count, pooling = int(match[3] or 1), float(match[4] or 1.0)
        if rows < 1 or dim < 1 or count < 1 or pooling <= 0:
            raise InputError(f"table {part.strip()!r}: rows, dim, count and pooling must be positive")
        for _ in range(count):
            tables.append(TableSpec(f"t{len(tables)}", rows, dim, pooling))
    return tables


def meta_collection(tables: list[TableSpec]) -> EmbeddingBagCollection:
    """The tables as a pooled collection on the meta device (planned without allocating a byte)."""
    configs = [
        EmbeddingBagConfig(name=t.name, embedding_dim=t.dim, num_embeddings=t.rows, feature_names=[t.name])
        for t in tables
    ]
    return EmbeddingBagCollection(tables=configs, device=torch.device("meta"))


def topology(world_size: int, device: str = "cuda", hbm_gib: float = HBM_GIB) -> Topology:
    local = min(LOCAL_WORLD, world_size) if device == "cuda" else world_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Topology(
            world_size=world_size,
            local_world_size=local,
            compute_device=device,
            hbm_cap=int(hbm_gib * GiB) if device == "cuda" else None,
        )


def solve(
    module: nn.Module,
    sharders: list[ModuleSharder[nn.Module]],
    world_size: int,
    batch_size: int,
    constraints: dict[str, ParameterConstraints] | None = None,
    device: str = "cuda",
    hbm_gib: float = HBM_GIB,
    fast: bool = True,
) -> list[ShardingOption]:
    """The planner's chosen sharding options (every shard with its rank, storage and perf estimate).

    `fast`: the greedy proposer only (the planner's default also tries uniform and grid proposals,
    minutes at 1,024 ranks for the same answer on tables like these).
    """
    quiet = logging.getLogger("torchrec.distributed.planner")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            planner = EmbeddingShardingPlanner(
                topology=topology(world_size, device, hbm_gib),
                batch_size=batch_size,
                constraints=constraints,
                proposer=[GreedyProposer()] if fast else None,
            )
            planner.plan(module, sharders)
    except Exception as error:  # the planner's PlannerError: no plan fits
        raise InputError(f"no plan for {world_size} ranks: {str(error).splitlines()[0]}") from error
    finally:
        quiet.setLevel(level)
    best = planner._best_plan  # the options behind the returned ShardingPlan (TorchRec 1.8 keeps them here)
    assert best is not None
    return list(best)


def hbm_constraints(
    tables: list[TableSpec], types: list[str] | None = None
) -> dict[str, ParameterConstraints]:
    """Every table in HBM with the fused TBE kernel (the planner's UVM and caching options left out),
    its pooling factor, and optionally a fixed set of sharding types."""
    return {
        t.name: ParameterConstraints(
            sharding_types=list(types) if types else None,
            compute_kernels=["fused"],
            pooling_factors=[t.pooling],
        )
        for t in tables
    }


def compare(
    tables: list[TableSpec],
    ranks: list[int],
    group: int = 64,
    batch_size: int = 512,
    sync_every: int = 1,
    hbm_gib: float = HBM_GIB,
    sharding_types: list[str] | None = None,
) -> list:
    """1D and 2D (groups of `group`) rows of `fxrec plan` for each world size in `ranks`.

    A group's plan is the same at every T (only the replicas change), so it is solved once.
    """
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    from fxrec.dist.traffic import shards_of, summarize

    if group < 1:
        raise InputError(f"--group must be at least 1, got {group}")
    module = meta_collection(tables)
    sharders: list[ModuleSharder[nn.Module]] = [EmbeddingBagCollectionSharder()]  # type: ignore[list-item]
    constraints = hbm_constraints(tables, sharding_types)
    local = LOCAL_WORLD

    def planned(world: int):
        return shards_of(solve(module, sharders, world, batch_size, constraints, hbm_gib=hbm_gib))

    rows = []
    grouped = None
    for world in ranks:
        rows.append(summarize(planned(world), world, world, batch_size, 1, local))
        if group < world:
            if world % group:
                raise InputError(f"{world} ranks do not split into groups of {group}")
            grouped = grouped or planned(group)
            rows.append(summarize(grouped, world, group, batch_size, sync_every, local))
    return rows
