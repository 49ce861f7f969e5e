"""Full, unsharded weights in and out of a sharded model.

A sharded model's state dict holds TorchRec `ShardedTensor`s (each rank its shards of the table-wise,
column-wise and table-column-wise tables) next to plain tensors (the dense part and data-parallel
tables, the same on every rank). `load_full` copies a one-process state dict into the shards, so every
rank starts from exactly the weights one process would; `gather_full` assembles the one-process state
dict on rank 0, so snapshots and model.pt written by a sharded run load anywhere one process's do. Both
move whole tables through rank 0: what the checkpoint of a run too big for that uses instead is
`fxrec.dist.checkpoint` (every rank writes its own shards).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor


def _region(tensor: torch.Tensor, offsets: list[int], sizes: list[int]) -> torch.Tensor:
    return tensor[tuple(slice(o, o + s) for o, s in zip(offsets, sizes, strict=True))]


@torch.no_grad()
def load_full(sharded_state: dict[str, Any], full: dict[str, torch.Tensor]) -> None:
    """Copy `full` (a one-process state dict) into the tensors of `sharded_state` (a sharded model's
    `state_dict()`, whose tensors share memory with the model), shard by shard."""
    missing = sorted(set(sharded_state) - set(full))
    if missing:
        raise KeyError(f"the full state has no {missing}")
    for key, value in sharded_state.items():
        source = full[key]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                meta = shard.metadata
                shard.tensor.copy_(_region(source, meta.shard_offsets, meta.shard_sizes))
        elif isinstance(value, DTensor) and _pieces(value) is not None:  # 2D: shards of a group
            for offsets, piece in _pieces(value) or []:
                piece.copy_(_region(source, offsets, list(piece.shape)))
        elif isinstance(value, DTensor):
            local = value.to_local()
            if local.numel():
                offsets = _dtensor_offsets(value)
                local.copy_(_region(source, offsets, list(local.shape)))
        else:
            value.copy_(source)


def _pieces(value: DTensor) -> list[tuple[list[int], torch.Tensor]] | None:
    """A DTensor's local shards with their global offsets, when its local part is TorchRec's
    LocalShardsWrapper (tables sharded in a 2D sharding group); None for a plain DTensor."""
    local = value.to_local()
    if not hasattr(local, "local_shards"):
        return None
    shards, offsets = local.local_shards(), local.local_offsets()  # type: ignore[attr-defined]
    if len(shards) != len(offsets):  # a rank holding none of the table: TorchRec leaves a placeholder
        return [] if all(s.numel() == 0 for s in shards) or not offsets else None
    return [(list(o), shard) for shard, o in zip(shards, offsets, strict=True) if shard.numel()]


def _dtensor_offsets(value: DTensor) -> list[int]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offsets = compute_local_shape_and_global_offset(value.shape, value.device_mesh, value.placements)
    return list(offsets)


@torch.no_grad()
def gather_full(sharded_state: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The one-process state dict of a sharded model on rank 0 (None on the other ranks).

    Every rank must call it (it is a collective). Keys and order are the sharded model's, which are the
    one-process model's: DistributedModelParallel keeps the module paths.
    """
    local: dict[str, list[tuple[list[int], torch.Tensor]]] = {}
    shapes: dict[str, tuple[torch.Size, torch.dtype]] = {}
    full: dict[str, torch.Tensor] = {}
    for key, value in sharded_state.items():
        if isinstance(value, ShardedTensor):
            shapes[key] = (value.size(), value.dtype)
            local[key] = [
                (list(s.metadata.shard_offsets), s.tensor.detach().cpu().clone())
                for s in value.local_shards()
            ]
        elif isinstance(value, DTensor) and _pieces(value) is not None:
            shapes[key] = (value.size(), value.dtype)
            local[key] = [(o, p.detach().cpu().clone()) for o, p in _pieces(value) or []]
        elif isinstance(value, DTensor):
            full[key] = value.full_tensor().detach().cpu().clone()
        else:
            full[key] = value.detach().cpu().clone()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        gathered = [local]
    else:
        gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(local, gathered, dst=0)
        if dist.get_rank() != 0:
            return None
    for key, (size, dtype) in shapes.items():
        tensor = torch.empty(size, dtype=dtype)
        for pieces in gathered:  # type: ignore[union-attr]
            for offsets, piece in pieces.get(key, []):
                _region(tensor, offsets, list(piece.shape)).copy_(piece)
        full[key] = tensor
    return {key: full[key] for key in sharded_state}
