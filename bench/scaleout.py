"""Scale-out: one process against 2 sharded gloo ranks on the same model, data and global batch; the
all-to-all bytes a rank really sends against `fxrec.dist.traffic`'s estimate for the same plan; and
`fxrec plan`'s 1D against 2D table at 64, 256 and 1,024 simulated ranks.

Throughput. One launch of 2 ranks (`fxrec.dist.session.launch`). Every round first times the one
process (rank 0 runs fxrec's plain `Trainer.train_step` on whole global batches, while rank 1 waits
in a barrier), then the 2 ranks (`ShardedTrainer.train_step` on their stripes): interleaved, so both
see the same machine load; 1 torch thread everywhere (ONE_PROCESS_THREADS). Batches are gathered
before the clock starts. The model is an FM (DCNv2) with every table sharded table-wise, so each step
exchanges ids and pooled embeddings; examples/s of 2 ranks over 1 process is the ratio reported, as
median (min, max) over rounds: 2 ranks on 2 cores against one process on one, on cores shared with
whatever else runs, so the ratio mixes the second core's gain with what communication and the
sharding machinery cost; the time breakdown below separates them.

Where a step's time goes, per rank: every `torch.distributed.all_to_all_single` (TorchRec's input
distribution of the sparse features, the pooled embeddings forward and their gradients backward) and
`all_reduce` is made synchronous and timed, and DDP's gradient all-reduce of the dense part runs
through a timing comm hook; compute is the step's time less both.

Bytes. The same wrappers count what each all-to-all sends to the other rank (its input splits for
peers, not the part it keeps): ids and lengths (integer tensors) as the input distribution, floats
sent inside autograd's backward pass as the backward, other floats as the forward output. The estimate is
`traffic.rank_costs` on the real run's plan (`traffic.shards_of_plan`) with the pooling factors
measured on the same batches, per rank, each rank training its half of the global batch. Goal:
within 20%.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common
import torch

from fxrec.config import FMConfig, ShardingConfig, TrainConfig
from fxrec.data.simulator import SimulatorConfig

NAME = "scaleout"
FM = dict(
    name="fm", role="fm", embedding_dim=16, dense_layers=[64], min_count=0,
    interaction={"name": "dcnv2", "num_layers": 2, "low_rank": 16}, heads={"hidden": [64]},
)  # fmt: skip
SHARDING = ShardingConfig(tables={"*": {"sharding_types": ["table_wise"]}})
PLAN_RANKS = [64, 256, 1024]
# torch threads of the one process. 1, like each rank: with 2 threads on 2 cores shared with the waiting
# rank and other work, OpenMP's spinning threads collapsed (measured 480 to 9,000 examples/s from round
# to round); so the ratio is 2 ranks on 2 cores against one process on one.
ONE_PROCESS_THREADS = 1


class Meter:
    """Synchronous, timed, counted collectives of one rank (see the module docstring)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.originals = {"all_to_all_single": dist.all_to_all_single, "all_reduce": dist.all_reduce}
        self.reset()

    def reset(self) -> None:
        self.seconds = {"all_to_all": 0.0, "all_reduce": 0.0}
        self.bytes = {"input": 0, "forward": 0, "backward": 0, "all_reduce": 0}

    def install(self) -> None:
        self.dist.all_to_all_single = self._all_to_all_single
        self.dist.all_reduce = self._all_reduce

    def remove(self) -> None:
        for name, fn in self.originals.items():
            setattr(self.dist, name, fn)

    def _all_to_all_single(
        self, output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False
    ):  # noqa: A002
        world, rank = self.dist.get_world_size(group), self.dist.get_rank(group)
        row = input[0].numel() if input.dim() > 1 and len(input) else 1
        splits = input_split_sizes or [len(input) // world] * world
        sent = sum(s for peer, s in enumerate(splits) if peer != rank) * row * input.element_size()
        backward = torch._C._current_graph_task_id() != -1  # inside autograd's backward pass
        kind = "input" if not input.is_floating_point() else "backward" if backward else "forward"
        self.bytes[kind] += sent
        started = time.perf_counter()
        work = self.originals["all_to_all_single"](
            output, input, output_split_sizes, input_split_sizes, group=group, async_op=True
        )
        work.wait()
        self.seconds["all_to_all"] += time.perf_counter() - started
        return work if async_op else None

    def _all_reduce(self, tensor, op=None, group=None, async_op=False):
        started = time.perf_counter()
        kwargs = {"op": op} if op is not None else {}
        work = self.originals["all_reduce"](tensor, group=group, async_op=True, **kwargs)
        work.wait()
        self.add_all_reduce(time.perf_counter() - started, tensor.numel() * tensor.element_size())
        return work if async_op else None

    def add_all_reduce(self, seconds: float, size: int) -> None:
        self.seconds["all_reduce"] += seconds
        self.bytes["all_reduce"] += size

    def ddp_hook(self, world: int):
        """A DDP comm hook: the bucket's all-reduce, synchronous and timed (the default hook's average)."""

        def hook(_state, bucket):
            tensor = bucket.buffer()
            started = time.perf_counter()
            self.originals["all_reduce"](tensor)
            tensor.div_(world)
            self.add_all_reduce(time.perf_counter() - started, tensor.numel() * tensor.element_size())
            future = torch.futures.Future()
            future.set_result(tensor)
            return future

        return hook


def _global_batches(log, features, batch: int, steps: int) -> tuple[list, list[torch.Tensor]]:
    """The first `steps` global batches of the log's days, in one process's shuffled order."""
    from fxrec.data.reader import iter_frames

    out: list = []
    for index, (_, frame) in enumerate(iter_frames(log, features)):
        order = torch.randperm(frame.num_rows, generator=torch.Generator().manual_seed(index))
        for start in range(0, frame.num_rows - batch + 1, batch):
            out.append((frame, order[start : start + batch]))
            if len(out) == steps:
                return [f for f, _ in out], [r for _, r in out]
    return [f for f, _ in out], [r for _, r in out]


def _rank(log_path: Path, batch: int, steps: int, rounds: int, model_root: Path) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from fxrec.data.eventlog import EventLog
    from fxrec.dist.session import start
    from fxrec.dist.traffic import rank_costs, shards_of_plan
    from fxrec.dist.trainer import ShardedTrainer, stripe
    from fxrec.factory import build_model
    from fxrec.train.trainer import Trainer

    session = start("gloo")
    rank, world = session.rank, session.world_size
    torch.set_num_threads(1)
    log = EventLog(log_path)
    train = TrainConfig(batch_size=batch, threads=1)

    def model():
        torch.manual_seed(0)
        return build_model(FMConfig(**FM), log.spec, embedding_lr=train.embedding_lr)

    sharded_model = model()
    configs = sharded_model.sparse_arch.collection.embedding_bag_configs()
    table_of = {f: c.name for c in configs for f in c.feature_names}
    sizes = {c.name: (c.num_embeddings, c.embedding_dim) for c in configs}
    readers = {c.name: len(c.feature_names) for c in configs}
    features = [log.spec.feature(n) for n in sharded_model.features]
    sharded = ShardedTrainer(
        sharded_model, train, model_root / f"two-{rank}", session, SHARDING, progress=False
    )
    meter = Meter()
    for module in sharded.dmp.modules():
        if isinstance(module, DistributedDataParallel):
            module.register_comm_hook(None, meter.ddp_hook(world))
    frames, orders = _global_batches(log, features, batch, steps + 2)
    mine = [
        (f.take(stripe(r, rank, world)[0]), stripe(r, rank, world)[1])
        for f, r in zip(frames, orders, strict=True)
    ]
    one = Trainer(model(), train, model_root / "one", progress=False) if rank == 0 else None
    whole = [f.take(r) for f, r in zip(frames, orders, strict=True)] if rank == 0 else []

    # pooling: ids per example of each table, over the global batches (every rank's stripes together)
    lengths: dict[str, float] = {}
    for b, _ in mine:
        for key, count in zip(b.sparse.keys(), b.sparse.length_per_key(), strict=True):
            lengths[table_of[key]] = lengths.get(table_of[key], 0.0) + count
    totals = [None] * world
    dist.all_gather_object(totals, lengths)
    examples = sum(len(r) for r in orders)
    pooling = {t: sum(tot.get(t, 0.0) for tot in totals) / examples for t in sizes}

    def run_sharded(batches) -> float:
        started = time.perf_counter()
        for b, weight in batches:
            sharded._loss_weight = weight
            sharded.train_step(b)
        return time.perf_counter() - started

    meter.install()
    if one is not None:
        torch.set_num_threads(ONE_PROCESS_THREADS)
        for b in whole[:2]:
            one.train_step(b)
        torch.set_num_threads(1)
    run_sharded(mine[:2])  # warm-up: first-step allocations on both sides
    measured = []
    for _ in range(rounds):
        session.barrier()
        one_seconds = None
        if one is not None:
            torch.set_num_threads(ONE_PROCESS_THREADS)
            started = time.perf_counter()
            for b in whole[2:]:
                one.train_step(b)
            one_seconds = time.perf_counter() - started
            torch.set_num_threads(1)
        session.barrier()
        meter.reset()
        seconds = run_sharded(mine[2:])
        measured.append(
            {
                "one_process_seconds": one_seconds,
                "seconds": seconds,
                "collective_seconds": dict(meter.seconds),
                "bytes": dict(meter.bytes),
            }
        )
    meter.remove()
    shards = shards_of_plan(sharded.plan, sizes, pooling, readers)
    costs = rank_costs(shards, group=world, batch=batch // world, local_world=world)
    estimate = {
        "input": float(costs.input_bytes[rank]),
        "forward": float(costs.output_bytes[rank]),
        "backward": float(costs.backward_bytes[rank]),
        "all_reduce": float(costs.allreduce_bytes[rank]),
    }
    result = {
        "rank": rank,
        "rounds": measured,
        "estimate": estimate,
        "plan": sharded.sharding,
        "pooling": pooling,
    }
    gathered = [None] * world
    dist.all_gather_object(gathered, result)
    return {"ranks": gathered}


def _median(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    args = _common.parse_args(NAME, __doc__.splitlines()[0])
    from rich.console import Console

    from fxrec.dist.session import launch
    from fxrec.jobs.plan import plan_job

    if args.quick:
        world = SimulatorConfig(days=2, impressions_per_day=6000, users=2000, advertisers=40, ads=400)
        batch, steps, rounds = 512, 20, 3
    else:
        world = SimulatorConfig(days=3, impressions_per_day=30000, users=20000, advertisers=200, ads=4000)
        batch, steps, rounds = 1024, 25, 5
    log_path = _common.simulated_log(world, f"scaleout-{'quick' if args.quick else 'full'}")
    with tempfile.TemporaryDirectory() as tmp:
        result = launch(2, _rank, log_path, batch, steps, rounds, Path(tmp))
    ranks = result["ranks"]
    examples = batch * steps
    rows, ratios = [], []
    for r in range(rounds):
        one = ranks[0]["rounds"][r]["one_process_seconds"]
        two = max(rank["rounds"][r]["seconds"] for rank in ranks)
        ratios.append(one / two)
        rows.append(
            {
                "round": r + 1,
                "1 process ex/s": examples / one,
                "2 ranks ex/s": examples / two,
                "2 ranks / 1": one / two,
            }
        )
    _common.print_table(f"examples/s, global batch {batch}, {steps} steps a round", rows)

    time_rows, byte_rows = [], []
    within = True
    for rank in ranks:

        def per_step(key: str, rounds: list = rank["rounds"]) -> float:
            return statistics.median(rd["collective_seconds"][key] for rd in rounds) / steps

        step = statistics.median(rd["seconds"] for rd in rank["rounds"]) / steps
        a2a, ar = per_step("all_to_all"), per_step("all_reduce")
        time_rows.append(
            {
                "rank": rank["rank"], "step ms": 1e3 * step, "compute ms": 1e3 * (step - a2a - ar),
                "all-to-all ms": 1e3 * a2a, "all-reduce ms": 1e3 * ar,
                "compute %": 100 * (step - a2a - ar) / step, "all-to-all %": 100 * a2a / step,
                "all-reduce %": 100 * ar / step,
            }
        )  # fmt: skip
        measured = {k: v / steps for k, v in rank["rounds"][0]["bytes"].items()}
        for kind in ("input", "forward", "backward"):
            est = rank["estimate"][kind]
            byte_rows.append(
                {"rank": rank["rank"], "all-to-all": kind, "measured B/step": measured[kind], "estimated B/step": est,
                 "measured / estimated": measured[kind] / est if est else None}
            )  # fmt: skip
        total_m = sum(measured[k] for k in ("input", "forward", "backward"))
        total_e = sum(rank["estimate"][k] for k in ("input", "forward", "backward"))
        within &= abs(total_m / total_e - 1) <= 0.20
        byte_rows.append(
            {"rank": rank["rank"], "all-to-all": "total", "measured B/step": total_m, "estimated B/step": total_e,
             "measured / estimated": total_m / total_e}
        )  # fmt: skip
    _common.print_table("where a 2-rank step's time goes (median over rounds)", time_rows)
    _common.print_table("all-to-all bytes a rank sends per step: measured vs fxrec.dist.traffic", byte_rows)

    console = Console(width=220)
    started = time.perf_counter()
    plan_rows = plan_job(ranks=PLAN_RANKS, group=64, console=console)
    plan_seconds = time.perf_counter() - started

    _common.write_result(
        args,
        NAME,
        rows + time_rows + byte_rows,
        {
            "two_ranks_over_one_process": _median(ratios),
            "all_to_all_measured_over_estimated": [r["measured / estimated"] for r in byte_rows if r["all-to-all"] == "total"],
            "all_to_all_within_20pct": within,
        },
        setup={"batch": batch, "steps_per_round": steps, "rounds": rounds, "simulator": world.model_dump(),
               "model": FM, "sharding": SHARDING.model_dump(), "one_process_threads": ONE_PROCESS_THREADS, "rank_threads": 1},
        ranks=ranks,
        plan={"ranks": PLAN_RANKS, "group": 64, "seconds": plan_seconds, "rows": [r.to_dict() for r in plan_rows]},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
