"""Scale-out: fxrec training over several ranks with TorchRec's DistributedModelParallel.

- `session`: the process group (gloo on CPU, NCCL on CUDA) from torchrun's environment, and
  `launch`, which starts N local ranks for `fxrec train ... --nproc N`.
- `planning`: the sharding plan from TorchRec's `EmbeddingShardingPlanner`, with per-table
  constraints from the run config's `sharding:` block.
- `state`: full (unsharded) weights in and out of a sharded model, so snapshots and model.pt stay
  exactly what one process writes.
- `trainer`: `ShardedTrainer`, the progressive trainer where each rank trains its stripe of every
  global batch; predictions, metrics, snapshots and the final weights equal one process's.
- `checkpoint`: sharded checkpoints with `torch.distributed.checkpoint`, resumable on any world size.
"""
