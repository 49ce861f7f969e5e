"""Sharding plans: TorchRec's `EmbeddingShardingPlanner` with the run config's per-table constraints.

Every rank asks for the plan together (`collective_plan`: rank 0 plans, the others receive it), so all
ranks shard the same way. The planner sees each table with the sharders fxrec's tables use: fused
embedding bags (the pooled layout, row-wise AdaGrad inside backward) and embedding collections (the
jagged-history layout).
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder, ShardedEmbeddingBagCollection
from torchrec.distributed.fused_embeddingbag import FusedEmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ModuleSharder, ShardingPlan
from torchrec.modules.fused_embedding_modules import convert_optimizer_type_and_kwargs

from fxrec.config import ShardingConfig, TableShardingConfig
from fxrec.dist.optim import momentum_scaled
from fxrec.dist.session import GLOO_SHARDING_TYPES, Session
from fxrec.errors import InputError

FBGEMM_EPS = 1e-8  # FBGEMM's row-wise AdaGrad eps when the collection names none


class _FusedBagsSharder(FusedEmbeddingBagCollectionSharder):
    """Fused embedding bags sharded as TorchRec's `ShardedEmbeddingBagCollection` with their optimizer.

    Sharded tables (table-, column-, table-column-wise) get fused TBEs running the collection's row-wise
    AdaGrad inside backward, exactly as one process. TorchRec's own fused sharder would also hand the
    data-parallel tables to DDP's fused-optimizer hook, which wants a functional twin of the optimizer
    (row-wise AdaGrad has none) and CUDA device ids; here the replicated tables stay plain DDP-averaged
    parameters, updated by `ReplicatedRowWiseAdagrad` (fxrec.dist.optim) after the average.
    """

    def __init__(self, accumulator_scale: float = 1.0):
        super().__init__()
        self.accumulator_scale = accumulator_scale  # 2D: the momentum-scaled row-wise AdaGrad's c

    def shard(self, module, params, env, device=None, module_fqn=None):  # type: ignore[override]
        optimizer = convert_optimizer_type_and_kwargs(module.optimizer_type(), module.optimizer_kwargs())
        assert optimizer is not None, f"no fused TBE optimizer for {module.optimizer_type()}"
        kind, kwargs = optimizer
        if self.accumulator_scale != 1.0:
            kwargs["learning_rate"], kwargs["eps"] = momentum_scaled(
                kwargs["learning_rate"], kwargs.get("eps", FBGEMM_EPS), self.accumulator_scale
            )
        return ShardedEmbeddingBagCollection(
            module,
            params,
            env=env,
            fused_params={"optimizer": kind, **kwargs},
            device=device,
            qcomm_codecs_registry=self.qcomm_codecs_registry,
        )


def sharders(accumulator_scale: float = 1.0) -> list[ModuleSharder[nn.Module]]:
    """fxrec's sharders; `accumulator_scale` c > 1 makes the fused tables' row-wise AdaGrad the
    momentum-scaled one (2D sparse parallelism, `fxrec.dist.optim`)."""
    return [
        _FusedBagsSharder(accumulator_scale),
        EmbeddingBagCollectionSharder(),
        EmbeddingCollectionSharder(),
    ]


def table_names(model: nn.Module) -> list[str]:
    """The embedding tables of an fxrec model (a RankingModel's sparse arch), in table order."""
    return list(model.sparse_arch._table_names)


def constraints(
    config: ShardingConfig, tables: list[str], device_type: str
) -> dict[str, ParameterConstraints]:
    """ParameterConstraints per table: its own entry, else `*`, else none (the planner chooses).

    On CPU the sharding types are limited to what gloo runs; asking for another is an InputError.
    """
    unknown = sorted(set(config.tables) - set(tables) - {"*"})
    if unknown:
        raise InputError(
            f"sharding.tables names {unknown}, which the model does not have; its tables: {tables}"
        )
    chosen: dict[str, ParameterConstraints] = {}
    for table in tables:
        entry = config.tables.get(table, config.tables.get("*"))
        if entry is None:
            if device_type == "cpu":
                chosen[table] = ParameterConstraints(sharding_types=list(GLOO_SHARDING_TYPES))
            continue
        chosen[table] = _parameter_constraints(table, entry, device_type)
    return chosen


def _parameter_constraints(table: str, entry: TableShardingConfig, device_type: str) -> ParameterConstraints:
    types = entry.sharding_types
    if device_type == "cpu":
        refused = sorted(set(types or []) - set(GLOO_SHARDING_TYPES))
        if refused:
            raise InputError(
                f"sharding.tables.{table}: {refused} need CUDA (gloo lacks the reduce-scatter they use); "
                f"on CPU use {list(GLOO_SHARDING_TYPES)}"
            )
        types = types or list(GLOO_SHARDING_TYPES)
    return ParameterConstraints(
        sharding_types=list(types) if types else None,
        compute_kernels=list(entry.compute_kernels) if entry.compute_kernels else None,
        min_partition=entry.min_partition,
    )


def plan(
    model: nn.Module, config: ShardingConfig, session: Session, world_size: int | None = None
) -> ShardingPlan:
    """The plan every rank of `session` shards `model` with (planned on rank 0, shared with the rest);
    for `world_size` ranks (2D: a sharding group's), all of the session's by default."""
    device_type = session.device.type
    world = world_size or session.world_size
    topology = Topology(world_size=world, local_world_size=world, compute_device=device_type)
    planner = EmbeddingShardingPlanner(
        topology=topology, constraints=constraints(config, table_names(model), device_type)
    )
    if dist.is_initialized():
        return planner.collective_plan(model, sharders(), dist.GroupMember.WORLD)
    return planner.plan(model, sharders())


def describe(sharding_plan: ShardingPlan) -> dict[str, dict[str, object]]:
    """{table: {sharding_type, compute_kernel, ranks}} of a plan, for logs and tests."""
    described: dict[str, dict[str, object]] = {}
    for module_plan in sharding_plan.plan.values():
        for table, parameter in module_plan.items():  # type: ignore[union-attr]
            described[table] = {
                "sharding_type": parameter.sharding_type,
                "compute_kernel": parameter.compute_kernel,
                "ranks": list(parameter.ranks or []),
            }
    return described
