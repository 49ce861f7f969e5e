"""2D sparse parallelism: tables sharded within groups of G ranks, replicated across the groups.

With T ranks and groups of G, there are M = T / G sharding groups; group g holds ranks
[g*G, (g+1)*G) (contiguous, TorchRec's `use_inter_host_allreduce` layout) and every table is sharded
over each group with the same plan, planned for G ranks. Rank r's replica group is the M ranks with the
same place in their group: {r mod G, r mod G + G, ...}. Each step:

- a group's all-to-alls stay inside it (TorchRec's sharded collections run on the group's process group,
  dividing embedding gradients by G), so the group trains on its ranks' stripes of the global batch;
- the dense part (and data-parallel tables) stay data-parallel over all T ranks: DDP on the world;
- every K steps (`sync_every`) each rank averages its shards' weights and row-wise AdaGrad state with
  its replicas (`sync`): the groups then hold the same tables again, as with one sharded model.

On CUDA, TorchRec's `DMPCollection` does this (`cuda_collection`); it asserts a CUDA or MTIA device, so
on CPU (gloo) fxrec builds the same groups itself on a device mesh, hands TorchRec's `ShardingEnv2D`
and the group's plan moved onto the group's ranks (`groups`, `global_plan`) to a plain
`DistributedModelParallel`, and averages the replicas itself (`sync`). Weights are
averaged rather than gradients because the fused kernels apply the optimizer inside backward and never
materialise a gradient -- which is why the 2D paper scales the AdaGrad accumulator (`fxrec.dist.optim`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.types import ShardingEnv, ShardingPlan

from fxrec.dist.session import Session
from fxrec.errors import InputError

# The flat buffers of FBGEMM's fused TBE that hold a rank's shards and their row-wise AdaGrad state.
TBE_STATE = ("weights_dev", "weights_host", "weights_uvm", "momentum1_dev", "momentum1_host", "momentum1_uvm")


@dataclass
class Groups:
    """This rank's sharding group and replica group, and TorchRec's 2D sharding environment over them."""

    size: int  # G: ranks a sharding group spans
    replicas: int  # M: sharding groups, copies of every shard
    index: int  # this rank's sharding group
    sharding: dist.ProcessGroup
    replica: dist.ProcessGroup
    env: ShardingEnv  # TorchRec's ShardingEnv2D: sharded modules on `sharding`, DDP on the world


def layout(world_size: int, group_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """(sharding groups, replica groups) of `world_size` ranks in groups of `group_size`."""
    if group_size < 1 or world_size % group_size:
        raise InputError(f"sharding.group_size {group_size} does not divide the {world_size} ranks")
    replicas = world_size // group_size
    sharding = [list(range(g * group_size, (g + 1) * group_size)) for g in range(replicas)]
    replica = [[i + g * group_size for g in range(replicas)] for i in range(group_size)]
    return sharding, replica


def groups(session: Session, group_size: int) -> Groups:
    """This rank's groups, from a ("replicate", "shard") device mesh of the world (every rank calls
    this): rows are the contiguous sharding groups of `layout`, columns the replica groups."""
    from torch.distributed.device_mesh import init_device_mesh
    from torchrec.distributed.types import ShardingEnv2D

    layout(session.world_size, group_size)
    replicas = session.world_size // group_size
    mesh = init_device_mesh(
        session.device.type, (replicas, group_size), mesh_dim_names=("replicate", "shard")
    )
    sharding, replica = mesh["shard"].get_group(), mesh["replicate"].get_group()
    env = ShardingEnv2D(
        sharding_pg=sharding,
        replica_pg=replica,
        global_pg=dist.GroupMember.WORLD,
        device_mesh=mesh,
        node_group_size=group_size,
        use_inter_host_allreduce=True,
    )
    return Groups(group_size, replicas, session.rank // group_size, sharding, replica, env)


def global_plan(plan: ShardingPlan, groups: Groups, device: torch.device) -> ShardingPlan:
    """A plan for one group's G ranks, moved onto this rank's group: shard rank r -> g*G + r (as
    DMPCollection remaps it)."""
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec
    from torch.distributed.remote_device import _remote_device

    moved = copy.deepcopy(plan)
    offset = groups.index * groups.size
    for module_plan in moved.plan.values():
        for parameter in module_plan.values():  # type: ignore[union-attr]
            parameter.ranks = [r + offset for r in parameter.ranks or []]
            spec = parameter.sharding_spec
            if isinstance(spec, EnumerableShardingSpec):
                for shard in spec.shards:
                    rank = int(shard.placement.rank()) + offset  # type: ignore[union-attr]
                    shard.placement = _remote_device(f"rank:{rank}/{device}")
    return moved


def tbe_state(model: nn.Module) -> list[torch.Tensor]:
    """The flat weight and AdaGrad buffers of every fused, sharded TBE in `model` (data-parallel tables,
    in FBGEMM's dense TBE, are left to DDP)."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

    tensors = []
    for module in model.modules():
        if isinstance(module, SplitTableBatchedEmbeddingBagsCodegen):
            for name in TBE_STATE:
                tensor = getattr(module, name, None)
                if isinstance(tensor, torch.Tensor) and tensor.numel():
                    tensors.append(tensor)
    return tensors


@torch.no_grad()
def sync(model: nn.Module, group: Groups, include_optimizer_state: bool = True) -> int:
    """Average this rank's shards (and their AdaGrad state) with its replicas; the bytes it all-reduced.

    Gloo has no averaging all-reduce: a sum, then a division by M.
    """
    if group.replicas == 1:
        return 0
    tensors = [t for t in tbe_state(model) if include_optimizer_state or not _is_optimizer_state(model, t)]
    if not tensors:
        return 0
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, group=group.replica)
    flat /= group.replicas
    start = 0
    for tensor in tensors:
        tensor.copy_(flat[start : start + tensor.numel()].view_as(tensor))
        start += tensor.numel()
    return flat.numel() * flat.element_size()


def _is_optimizer_state(model: nn.Module, tensor: torch.Tensor) -> bool:
    for module in model.modules():
        for name in TBE_STATE:
            if name.startswith("momentum1") and getattr(module, name, None) is tensor:
                return True
    return False


def cuda_collection(
    model: nn.Module, session: Session, group_size: int, plan, sharders
) -> DistributedModelParallel:
    """TorchRec's own 2D, `DMPCollection` (CUDA or MTIA only: it asserts so); `sync()` is its method."""
    from torchrec.distributed.model_parallel import DMPCollection

    if session.device.type not in ("cuda", "mtia"):
        raise InputError("DMPCollection needs CUDA or MTIA; on CPU fxrec's own 2D runs (fxrec.dist.two_d)")
    return DMPCollection(
        module=model,
        device=session.device,
        plan=plan,
        world_size=session.world_size,
        sharding_group_size=group_size,
        global_pg=dist.GroupMember.WORLD,
        sharders=sharders,
        use_inter_host_allreduce=True,  # contiguous sharding groups, as on CPU
        data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False),
    )
