"""ShardedTrainer: the progressive trainer on several ranks, behaving as one process.

The model is built on every rank exactly as one process builds it (same seed, same initial weights),
then handed to TorchRec's `DistributedModelParallel` with the plan of `fxrec.dist.planning`: the tables
are sharded (or replicated, data-parallel) and the dense part is wrapped in DistributedDataParallel.
The one-process weights are then copied into the shards, so every rank starts where one process does.

Each global batch (the run's `batch_size`, in the one process's shuffled order) is cut into one
contiguous stripe per rank: rank r of N trains rows [r*n/N, (r+1)*n/N) of a batch of n. Its loss is its
stripe's mean scaled by n_r*N/n, so that DDP's average over ranks, and TorchRec's division of embedding
gradients by the world size, give exactly the gradient of the global batch's mean -- the one process's
gradient, also when n is not a multiple of N. A rank whose stripe is empty (n < N) trains one row of the
batch with weight 0, so that every rank takes part in every collective. Frequency admission counts
(`min_count`) are summed over the ranks after each step, so every rank admits ids as one process does.

Predictions: each rank predicts its stripe of the day, rank 0 gathers them into the one file one
process writes; snapshots and model.pt are the gathered, unsharded weights (`fxrec.dist.state`), so
`fxrec publish`, `fxrec eval` and serving read a sharded run's outputs unchanged. Checkpoints are
sharded (`fxrec.dist.checkpoint`) and resume on any world size.

With `sharding.group_size` G < world size, the run is 2D (`fxrec.dist.two_d`): tables sharded within
groups of G ranks (planned for G), replicated across the groups and averaged every `sync_every` steps,
with the momentum-scaled row-wise AdaGrad (`fxrec.dist.optim`); DMPCollection on CUDA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import (
    DefaultDataParallelWrapper,
    DistributedModelParallel,
    get_unwrapped_module,
)

from fxrec.config import ShardingConfig, TrainConfig
from fxrec.data.batches import Batch, EventFrame
from fxrec.dist import checkpoint, two_d
from fxrec.dist.optim import ReplicatedRowWiseAdagrad
from fxrec.dist.planning import describe, plan, sharders
from fxrec.dist.session import Session
from fxrec.dist.state import gather_full, load_full
from fxrec.errors import InputError
from fxrec.lowp.dispatch import Dispatch
from fxrec.models.checkpoint import model_state, save_atomic
from fxrec.models.output import ModelOutput
from fxrec.models.ranking import RankingModel
from fxrec.run import ModelDir
from fxrec.train.trainer import Trainer
from fxrec.transfer.published import PublishedFM


def stripe(rows: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, float]:
    """Rank `rank`'s contiguous part of a global batch's rows and its loss weight n_r*N/n (0: padding)."""
    n = len(rows)
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    if hi > lo:
        return rows[lo:hi], (hi - lo) * world_size / n
    return rows[:1], 0.0


def unsupported(model: RankingModel, config: TrainConfig, dispatch: Dispatch | None) -> list[str]:
    """What sharded training does not do yet, one line each (checked before any rank starts)."""
    problems = []
    if model.fused_optimizer() is None:
        problems.append(
            "sharded training needs the fused embedding bags (embedding_optimizer: rowwise_adagrad, no jagged history)"
        )
    if config.embedding_optimizer != "rowwise_adagrad":
        problems.append(
            "sharded training updates the tables with the fused row-wise AdaGrad: embedding_optimizer: rowwise_adagrad"
        )
    if any(channel.own_parameters() for channel in model.channels):
        problems.append(
            "transfer channels with their own optimizer (exfm) are not sharded yet: train this VM on one process"
        )
    if dispatch is not None and dispatch.active:
        problems.append(
            "a dispatch: plan swaps Linears, which DistributedDataParallel cannot follow: train with dispatch: none"
        )
    return problems


class ShardedTrainer(Trainer):
    """A `Trainer` whose model is sharded over the ranks of `session` (see the module docstring)."""

    def __init__(
        self,
        model: RankingModel,
        config: TrainConfig,
        model_dir: ModelDir | Path,
        session: Session,
        sharding: ShardingConfig | None = None,
        progress: bool = True,
        published: PublishedFM | None = None,
        dispatch: Dispatch | None = None,
    ):
        problems = unsupported(model, config, dispatch)
        if problems:
            raise InputError(*problems)
        super().__init__(
            model,
            config,
            model_dir,
            progress=progress and session.main,
            published=published,
            dispatch=dispatch,
        )
        self.session = session
        sharding = sharding or ShardingConfig()
        full = model_state(model)  # the one-process initial weights, the same on every rank (same seed)
        # 2D sparse parallelism (fxrec.dist.two_d): sharded within groups, replicated across them
        self.groups: two_d.Groups | None = None
        self.sync_every = sharding.sync_every
        self._unsynced = 0
        self.collection = None  # TorchRec's DMPCollection (2D on CUDA)
        size = sharding.group_size
        if size is not None and size < session.world_size:
            two_d.layout(session.world_size, size)  # InputError when G does not divide the ranks
            if session.device.type == "cpu":
                self.groups = two_d.groups(session, size)
        replicas = session.world_size // size if size is not None and size < session.world_size else 1
        scale = float(replicas) if sharding.momentum_scaled else 1.0
        self.plan = plan(model, sharding, session, world_size=size if replicas > 1 else None)
        if replicas > 1 and self.groups is None:
            self.dmp = self.collection = two_d.cuda_collection(
                model, session, size, self.plan, sharders(scale)
            )
        else:
            # static_graph=False: DDP's static-graph mode all-reduces its first step from a hook on the
            # forward's output tensors, which it cannot find inside a ModelOutput -- that step would go
            # unsynced. 2D: the tables on the sharding group, DDP over every rank (ShardingEnv2D).
            self.dmp = DistributedModelParallel(
                model,
                env=self.groups.env if self.groups else None,
                device=session.device,
                plan=two_d.global_plan(self.plan, self.groups, session.device) if self.groups else self.plan,
                sharders=sharders(scale),
                data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False),
            )
        load_full(self.dmp.state_dict(), full)
        self.model = get_unwrapped_module(self.dmp)  # the RankingModel, its tables now sharded in place
        self.embedding_optimizer = self.dmp.fused_optimizer  # step() and zero_grad() are no-ops: fused
        replicated = [
            p
            for name, p in self.dmp.named_parameters()
            if "sparse_arch." in name and not hasattr(p, "_in_backward_optimizers")
        ]  # data-parallel tables: DDP averages their gradients, this updates them
        self.replica_optimizer = ReplicatedRowWiseAdagrad(
            replicated, dim=model.sparse_arch.dim, lr=config.embedding_lr
        )
        self._loss_weight = 1.0

    @property
    def sharding(self) -> dict[str, dict[str, object]]:
        """{table: {sharding_type, compute_kernel, ranks}} as planned."""
        return describe(self.plan)

    # -- one step ---------------------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        return self.dmp(batch)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, logits = super().loss(batch)
        return (total if self._loss_weight == 1.0 else total * self._loss_weight), logits

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.dmp.train()
        admission = self.model.sparse_arch.admission
        counted = admission.min_count > 0 and self.session.world_size > 1
        before = [b.clone() for b in admission.buffers()] if counted else []
        self.replica_optimizer.zero_grad(set_to_none=True)
        logits = super().train_step(batch)
        self.replica_optimizer.step()
        if counted:
            self._sum_admission_counts(list(admission.buffers()), before)
        if self.groups is not None or self.collection is not None:
            self._unsynced += 1
            if self._unsynced >= self.sync_every:
                self.sync_replicas()
        return logits

    def sync_replicas(self) -> None:
        """2D: average every shard and its AdaGrad state with its replicas (every K steps, and before
        predictions, snapshots and checkpoints read the tables)."""
        if self._unsynced == 0:
            return
        if self.collection is not None:
            self.collection.sync(include_optimizer_state=True)
        elif self.groups is not None:
            two_d.sync(self.dmp, self.groups)
        self._unsynced = 0

    def _sum_admission_counts(self, counts: list[torch.Tensor], before: list[torch.Tensor]) -> None:
        """Every rank's counts += the other ranks' increments of this step (a padding row counts 0)."""
        deltas = torch.cat([(now - then).flatten() for now, then in zip(counts, before, strict=True)])
        if self._loss_weight == 0.0:
            deltas.zero_()
        dist.all_reduce(deltas)
        start = 0
        for now, then in zip(counts, before, strict=True):
            now.copy_(then + deltas[start : start + now.numel()].view_as(now))
            start += now.numel()

    def _take(self, frame: EventFrame, rows: torch.Tensor) -> EventFrame:
        """This rank's stripe of a global batch (the one process's batch, in its order), and its loss share."""
        local, self._loss_weight = stripe(rows, self.session.rank, self.session.world_size)
        return frame.take(local)

    def _batches(self, *args, **kwargs):
        yield from super()._batches(*args, **kwargs)
        self._loss_weight = 1.0

    # -- predictions ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, frame: EventFrame) -> dict[str, np.ndarray]:
        """The whole day's predictions on rank 0 (each rank predicts its stripes); {} on the others."""
        self.sync_replicas()
        self.dmp.eval()
        size = max(self.config.batch_size, 4096)
        rank, world = self.session.rank, self.session.world_size
        mine: list[torch.Tensor] = []
        chunks: dict[str, list[np.ndarray]] = {t: [] for t in self.model.tasks}
        for start in range(0, frame.num_rows, size * world):
            rows, weight = stripe(torch.arange(start, min(start + size * world, frame.num_rows)), rank, world)
            logits = self.model(frame.take(rows)).logits
            if weight > 0:
                mine.append(rows)
                for task in self.model.tasks:
                    chunks[task].append(torch.sigmoid(logits[task]).numpy())
        local = (
            torch.cat(mine).numpy() if mine else np.zeros(0, dtype=np.int64),
            {t: np.concatenate(v) if v else np.zeros(0, dtype=np.float32) for t, v in chunks.items()},
        )
        gathered = self._gather(local)
        if gathered is None:
            return {}
        out = {t: np.zeros(frame.num_rows, dtype=np.float32) for t in self.model.tasks}
        for rows, probs in gathered:
            for task in self.model.tasks:
                out[task][rows] = probs[task]
        return out

    def _gather(self, obj):
        if self.session.world_size == 1:
            return [obj]
        gathered = [None] * self.session.world_size if self.session.main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def _write_predictions(self, frame: EventFrame, day: str) -> None:
        if self.session.main:
            super()._write_predictions(frame, day)
        else:
            self.predict(frame)  # its part of the collective forwards and the gather

    # -- weights and checkpoints ------------------------------------------------------------
    def _save_weights(self, path: Path) -> None:
        self.sync_replicas()
        full = gather_full(self.dmp.state_dict())
        if full is not None:
            save_atomic(full, path)
        self.session.barrier()

    def _checkpoint(self, day: str, batches_done: int, day_finished: bool) -> None:
        progress = {
            **self._progress(day, batches_done, day_finished),  # the dense optimizer: rank 0's is every rank's
            "world_size": self.session.world_size,
            "replica_optimizer": self.replica_optimizer.state_dict(),
        }
        self.sync_replicas()
        checkpoint.save(self.dmp, progress, checkpoint.directory(self.model_dir), self.session, self.groups)

    def _restore(self) -> tuple[str, int, bool] | None:
        progress = checkpoint.load(self.dmp, checkpoint.directory(self.model_dir), self.groups)
        if progress is None:
            return None
        if progress.get("replica_optimizer") is not None and _same_replicas(
            self.replica_optimizer, progress["replica_optimizer"]
        ):
            self.replica_optimizer.load_state_dict(progress["replica_optimizer"])
        return self._resume_progress(progress)


def _same_replicas(optimizer: ReplicatedRowWiseAdagrad, state: dict) -> bool:
    """Whether a checkpoint's replicated-table state fits this plan's replicated tables (same plan)."""
    mine = [tuple(optimizer.state[p]["sum"].shape) for g in optimizer.param_groups for p in g["params"]]
    theirs = [tuple(v["sum"].shape) for _, v in sorted(state["state"].items())]
    return mine == theirs
