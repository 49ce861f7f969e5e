"""Training throughput of the same DCNv2 in fxrec, DeepCTR-Torch, FuxiCTR and plain PyTorch, on the same work.

Data: the simulator's log in the demo's world (configs/demo.yaml's simulator; fewer days), all
surfaces; every day but the last is trained on, the last day is held out for logloss / AUC (so nobody
benchmarks a broken model). Features: the VM-visible ones (9 sparse single-id features + 2 dense),
hashed into the same table rows for every framework, embedding dim 16.

Model: DCNv2 with 2 cross layers; fxrec and the plain reference use the low-rank cross (rank 32),
a bottom MLP [64] -> one token for the dense features, and an MLP tower [128, 64] -> 1 on the cross
output (DCNv2 "stacked"). The peers are as close as their wheels allow (see PEERS below and the
JSON's "models"). One epoch = one pass over the training days, timed end to end from each
framework's own input format: fxrec reads Parquet day by day into EventFrames (fxrec.data.reader),
shuffles within the day and calls Trainer.train_step; DeepCTR runs model.fit(epochs=1) on its numpy
dict; FuxiCTR runs BaseModel.train_epoch on its NpzDataLoader; plain PyTorch slices in-memory tensors.
The peers' one-off preprocessing (Parquet -> numpy / npz) is NOT timed, fxrec's Parquet reading is.

The optimizer is part of the work, so systems are only compared within a group that runs the same
update rule (UPDATE_RULES below and in the JSON):

- `dense_adam`: every system -- fxrec (TrainConfig embedding_optimizer: adam, unfused TorchRec
  tables), DeepCTR-Torch, FuxiCTR, plain PyTorch (foreach and fused Adam) -- runs Adam (lr 1e-3) on
  every parameter from dense gradients: every row of every table moves on every step.
- `sparse_rowwise`: only the rows a batch touched move. fxrec: row-wise AdaGrad fused into FBGEMM's
  TBE backward (its default); plain PyTorch: nn.Embedding(sparse=True) with torch.optim.Adagrad on
  the sparse gradients (element-wise AdaGrad, the closest built-in: same rows and step form, one
  accumulator per value instead of one per row). Both: fused Adam (lr 1e-3) on the dense part.

Each group runs at the demo's table sizes (`demo`: item_id 2048 rows, advertiser_id 301, the rest
4..25) and with the id tables (item_id, advertiser_id) at 10^6 rows (`1e6`; the same ids, so the
same rows are touched): dense Adam's cost grows with the tables, the sparse update's does not.

Rounds: every system trains one epoch per round, in an order that rotates per round, so the same
machine load falls on everyone; the ratios fxrec / each other system are taken per round and
reported as median, min and max over rounds (round 1 holds every system's first epoch, with its
one-off costs: page faults on fresh tables and optimizer state). torch threads: 2 for all;
DataLoader workers: 0. fp32 everywhere.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import _common
import numpy as np
import pyarrow as pa
import torch
import yaml
from _plain_dcn import PlainDCN

from fxrec.config import TrainConfig, VMConfig
from fxrec.data.batches import hash_rows
from fxrec.data.eventlog import EventLog
from fxrec.data.reader import iter_frames
from fxrec.data.schema import FeatureKind, FeatureSpec
from fxrec.data.simulator import SimulatorConfig, simulate_to
from fxrec.factory import build_model
from fxrec.metrics.ranking import auc, log_loss
from fxrec.train.trainer import Trainer

NAME = "train_throughput"
DIM, CROSS_LAYERS, LOW_RANK, DENSE_LAYERS, HIDDEN, LR = 16, 2, 32, [64], [128, 64], 1e-3
ADAGRAD_LR = TrainConfig().embedding_lr  # fxrec's default row-wise AdaGrad rate, for both sparse systems
THREADS = 2
TABLES = {"demo": None, "1e6": 10**6}  # rows of the id tables (None: the demo world's own sizes)
GROUPS = ("dense_adam", "sparse_rowwise")

PEERS = {
    "deepctr DCN(matrix)": "DeepCTR-Torch DCN, cross_parameterization='matrix' (full-rank DCNv2 cross, W: n*d x n*d), "
    "parallel structure: cross || DNN(128, 64) on the raw embeddings + dense values, concat -> linear, "
    "plus DeepCTR's linear (wide) logit; l2 regs 0; dense features enter as raw values (no bottom MLP)",
    "deepctr DCNMix(1 expert)": "DeepCTR-Torch DCNMix, num_experts=1, low_rank=32 (low-rank cross with tanh and an r x r "
    "matrix in the low-rank space, plus a 1-way gate), otherwise as DCN(matrix)",
    "fuxictr CrossNetV2": "FuxiCTR 2.3.10's wheel has no DCNv2 model file; built from its own layers on its BaseModel: "
    "FeatureEmbedding (numeric features -> Linear(1, 16) tokens) -> CrossNetV2 (full-rank, 2 layers) -> "
    "MLP_Block(128, 64) -> 1, stacked; BaseModel.train_step (grad-norm clip 10)",
    "fuxictr CrossNetMix(1 expert)": "as fuxictr CrossNetV2 but CrossNetMix(low_rank=32, num_experts=1)",
}

_ADAM = f"Adam(lr {LR:g}, betas (0.9, 0.999), eps 1e-8, no weight decay)"
_ADAGRAD = f"AdaGrad(lr {ADAGRAD_LR:g}, eps 1e-8, accumulators start at 0)"
UPDATE_RULES = {
    "dense_adam": {
        "rule": f"{_ADAM} on every parameter, tables included, from dense gradients: every row of every table "
        "moves on every step, touched by the batch or not",
        "fxrec": "TrainConfig(embedding_optimizer='adam', embedding_lr=1e-3): unfused TorchRec EmbeddingBagCollection "
        "(dense table gradients) + torch.optim.Adam (foreach) on the tables; torch.optim.Adam(fused=True) on the "
        "dense part",
        "plain pytorch": "nn.Embedding (dense gradients); torch.optim.Adam (foreach) on every parameter",
        "plain pytorch (fused Adam)": "nn.Embedding (dense gradients); torch.optim.Adam(fused=True) on every parameter",
        "deepctr": "model.compile('adam'): torch.optim.Adam(lr 1e-3) on every parameter; nn.Embedding(sparse=False)",
        "fuxictr": "compile('Adam', lr=1e-3): torch.optim.Adam on every parameter; grad-norm clip 10 first",
    },
    "sparse_rowwise": {
        "rule": f"tables: {_ADAGRAD} on the rows the batch touched only; dense part: {_ADAM}, fused",
        "fxrec": "FusedEmbeddingBagCollection: FBGEMM TBE row-wise AdaGrad applied inside backward, one accumulator "
        "per row (the mean over the row's 16 values of the squared gradient); fxrec's default",
        "plain pytorch (sparse Adagrad)": "nn.Embedding(sparse=True): sparse COO gradients; torch.optim.Adagrad on "
        "the tables (element-wise: one accumulator per value, so the same rows move with a per-value step "
        "size; the closest built-in to row-wise AdaGrad); torch.optim.Adam(fused=True) on the dense part",
    },
}


def _features(log: EventLog) -> list[FeatureSpec]:
    """The VM-visible single-id sparse and dense features (no multi-valued, no sequence)."""
    return [f for f in log.spec.select(None, "vm") if f.kind in (FeatureKind.sparse, FeatureKind.dense)]


def _sparse(features: list[FeatureSpec]) -> list[FeatureSpec]:
    return [f for f in features if f.kind is FeatureKind.sparse]


def _dense(features: list[FeatureSpec]) -> list[FeatureSpec]:
    return [f for f in features if f.kind is FeatureKind.dense]


def _arrays(table: pa.Table, features: list[FeatureSpec]) -> dict[str, np.ndarray]:
    """{feature: hashed rows (int64) or values (float32), "click": labels} -- the peers' one-off input."""
    out: dict[str, np.ndarray] = {}
    for feature in features:
        column = table.column(feature.name).combine_chunks()
        if feature.kind is FeatureKind.sparse:
            valid = np.asarray(column.is_valid())
            ids = column.fill_null(0).to_numpy(zero_copy_only=False)
            out[feature.name] = hash_rows(ids, feature.cardinality or 2, valid)
        else:
            out[feature.name] = column.fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32)
    out["click"] = table.column("click").to_numpy().astype(np.float32)
    return out


class Runner(Protocol):
    name: str

    def epoch(self) -> int: ...  # trains one epoch, returns the number of examples

    def predict(self) -> np.ndarray: ...  # click probabilities on the held-out day


# -- fxrec ------------------------------------------------------------------------------------
class FxrecRunner:
    def __init__(self, log: EventLog, train_days: list[str], eval_day: str, batch_size: int, workdir: Path,
                 group: str):
        self.name = "fxrec"
        self.log, self.train_days, self.eval_day = log, train_days, eval_day
        self.features = _features(log)
        adam = group == "dense_adam"
        torch.manual_seed(0)
        model = build_model(
            VMConfig(
                name="fxrec", role="vm", features=[f.name for f in self.features], tasks=["click"],
                embedding_dim=DIM, dense_layers=DENSE_LAYERS,
                interaction={"name": "dcnv2", "num_layers": CROSS_LAYERS, "low_rank": LOW_RANK},
                heads={"kind": "shared_bottom", "hidden": HIDDEN},
            ),
            log.spec, embedding_lr=ADAGRAD_LR, embedding_optimizer="adam" if adam else "rowwise_adagrad",
        )
        config = TrainConfig(batch_size=batch_size, dense_lr=LR, threads=THREADS,
                             embedding_optimizer="adam" if adam else "rowwise_adagrad",
                             embedding_lr=LR if adam else ADAGRAD_LR)
        self.trainer = Trainer(model, config, workdir / f"fxrec_{group}", progress=False)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(0)
        self.load_seconds: list[float] = []  # per epoch: Parquet -> EventFrame time inside the timed epoch

    def epoch(self) -> int:
        examples, loading = 0, 0.0
        frames = iter_frames(self.log, self.features, days=self.train_days)
        while True:
            started = time.perf_counter()
            _, frame = next(frames, (None, None))
            loading += time.perf_counter() - started
            if frame is None:
                break
            order = torch.randperm(frame.num_rows, generator=self.generator)
            for start in range(0, frame.num_rows, self.batch_size):
                batch = frame.take(order[start : start + self.batch_size])
                self.trainer.train_step(batch)
                examples += batch.size
        self.load_seconds.append(loading)
        return examples

    def predict(self) -> np.ndarray:
        _, frame = next(iter_frames(self.log, self.features, days=[self.eval_day]))
        return self.trainer.predict(frame)["click"]


# -- plain PyTorch ----------------------------------------------------------------------------
class PlainRunner:
    def __init__(self, train: dict[str, np.ndarray], held_out: dict[str, np.ndarray], features: list[FeatureSpec],
                 batch_size: int, sparse_gradients: bool, fused_adam: bool = False):
        if sparse_gradients:
            self.name = "plain pytorch (sparse Adagrad)"
        else:
            self.name = "plain pytorch (fused Adam)" if fused_adam else "plain pytorch"
        sparse, dense = _sparse(features), _dense(features)
        self.rows, self.dense, self.labels = self._tensors(train, sparse, dense)
        self.eval_rows, self.eval_dense, _ = self._tensors(held_out, sparse, dense)
        torch.manual_seed(0)
        self.model = PlainDCN([f.cardinality or 2 for f in sparse], len(dense), DIM, DENSE_LAYERS, CROSS_LAYERS,
                              LOW_RANK, HIDDEN, sparse_gradients=sparse_gradients)
        self.optimizers = self.model.optimizers(LR, fused=fused_adam, table_lr=ADAGRAD_LR)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(0)

    @staticmethod
    def _tensors(arrays: dict[str, np.ndarray], sparse: list[FeatureSpec], dense: list[FeatureSpec]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(np.stack([arrays[f.name] for f in sparse], axis=1))
        values = torch.from_numpy(np.stack([arrays[f.name] for f in dense], axis=1))
        return rows, values, torch.from_numpy(arrays["click"])

    def epoch(self) -> int:
        self.model.train()
        order = torch.randperm(len(self.labels), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
            logits = self.model(self.rows[index], self.dense[index])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, self.labels[index])
            loss.backward()
            for optimizer in self.optimizers:
                optimizer.step()
        return len(order)

    @torch.no_grad()
    def predict(self) -> np.ndarray:
        self.model.eval()
        return torch.sigmoid(self.model(self.eval_rows, self.eval_dense)).numpy()


# -- DeepCTR-Torch ----------------------------------------------------------------------------
class DeepCTRRunner:
    def __init__(self, train: dict[str, np.ndarray], held_out: dict[str, np.ndarray], features: list[FeatureSpec],
                 batch_size: int, variant: str):
        from deepctr_torch.inputs import DenseFeat, SparseFeat
        from deepctr_torch.models import DCN, DCNMix

        self.name = variant
        columns = [SparseFeat(f.name, vocabulary_size=f.cardinality or 2, embedding_dim=DIM) for f in _sparse(features)]
        columns += [DenseFeat(f.name, 1) for f in _dense(features)]
        common = dict(dnn_hidden_units=tuple(HIDDEN), l2_reg_linear=0.0, l2_reg_embedding=0.0, l2_reg_cross=0.0,
                      l2_reg_dnn=0.0, seed=0, device="cpu")
        if variant == "deepctr DCN(matrix)":
            self.model = DCN(columns, columns, cross_num=CROSS_LAYERS, cross_parameterization="matrix", **common)
        else:
            self.model = DCNMix(columns, columns, cross_num=CROSS_LAYERS, low_rank=LOW_RANK, num_experts=1, **common)
        self.model.compile("adam", "binary_crossentropy")
        names = [f.name for f in features]
        self.x = {n: train[n] for n in names}
        self.y = train["click"]
        self.eval_x = {n: held_out[n] for n in names}
        self.batch_size = batch_size

    def epoch(self) -> int:
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and sample counts
            self.model.fit(dict(self.x), self.y, batch_size=self.batch_size, epochs=1, verbose=0)
        return len(self.y)

    def predict(self) -> np.ndarray:
        return self.model.predict(dict(self.eval_x), batch_size=4096).reshape(-1)


# -- FuxiCTR ----------------------------------------------------------------------------------
def _fuxictr_model_class() -> type:
    from fuxictr.pytorch.layers import FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.layers.interactions.cross_net import CrossNetMix, CrossNetV2
    from fuxictr.pytorch.models import BaseModel

    class BenchDCNv2(BaseModel):
        """DCNv2 (stacked) composed from FuxiCTR's own layers; its wheel ships no DCNv2 model file."""

        def __init__(self, feature_map: Any, cross: str, model_root: str):
            super().__init__(feature_map, model_id=f"bench_dcnv2_{cross}", gpu=-1, verbose=0,
                             model_root=model_root, metrics=["logloss"])
            self.embedding_layer = FeatureEmbedding(feature_map, DIM)
            width = feature_map.num_fields * DIM
            self.crossnet = (CrossNetV2(width, CROSS_LAYERS) if cross == "v2"
                             else CrossNetMix(width, CROSS_LAYERS, low_rank=LOW_RANK, num_experts=1))
            self.mlp = MLP_Block(width, hidden_units=list(HIDDEN), output_dim=1)
            self.compile("Adam", "binary_crossentropy", LR)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            X = self.get_inputs(inputs)
            x0 = self.embedding_layer(X, flatten_emb=True)
            y_pred = self.output_activation(self.mlp(self.crossnet(x0)))
            return {"y_pred": y_pred}

    return BenchDCNv2


class FuxiCTRRunner:
    def __init__(self, train: dict[str, np.ndarray], held_out: dict[str, np.ndarray], features: list[FeatureSpec],
                 batch_size: int, variant: str, workdir: Path):
        from fuxictr.features import FeatureMap
        from fuxictr.pytorch.dataloaders.npz_dataloader import NpzDataLoader

        logging.getLogger().setLevel(logging.WARNING)
        self.name = variant
        feature_map = FeatureMap("bench", str(workdir))
        for f in features:
            spec = {"type": "categorical", "vocab_size": f.cardinality or 2} if f.kind is FeatureKind.sparse \
                else {"type": "numeric"}
            feature_map.features[f.name] = {"source": "", **spec}
        feature_map.labels = ["click"]
        feature_map.num_fields = len(features)
        feature_map.set_column_index()
        names = [f.name for f in features] + ["click"]
        paths = {}
        for split, arrays in (("train", train), ("held_out", held_out)):
            paths[split] = str(workdir / f"fuxictr_{split}.npz")
            np.savez(paths[split], **{n: arrays[n] for n in names})  # FuxiCTR's npz format: one array per column
        self.loader = NpzDataLoader(feature_map, paths["train"], batch_size=batch_size, shuffle=True, num_workers=0)
        self.eval_loader = NpzDataLoader(feature_map, paths["held_out"], batch_size=4096, shuffle=False, num_workers=0)
        torch.manual_seed(0)
        self.model = _fuxictr_model_class()(feature_map, "v2" if "V2" in variant else "mix", str(workdir))
        self.model._max_gradient_norm = 10.0  # BaseModel.fit's default
        self.model._eval_steps = 2**62  # no mid-epoch validation
        self.model._total_steps = 0
        self.model._stop_training = False

    def epoch(self) -> int:
        self.model.train_epoch(self.loader)
        return self.loader.num_samples

    def predict(self) -> np.ndarray:
        return self.model.predict(self.eval_loader)


# -- the run ----------------------------------------------------------------------------------
def _simulate(quick: bool, workdir: Path) -> Path:
    """The demo's world (its users, ads, advertisers: the demo's table sizes) over fewer days."""
    days, per_day = (2, 12_000) if quick else (4, 72_000)
    demo = yaml.safe_load((_common.ROOT / "configs" / "demo.yaml").read_text())["simulator"]
    config = SimulatorConfig.model_validate({**demo, "days": days, "impressions_per_day": per_day})
    return simulate_to(config, workdir / "events", progress=False)


def _log(path: Path, id_rows: int | None) -> EventLog:
    """The log, read with its id tables (the `*_id` features) at `id_rows` rows; None: as simulated.
    The ids are the same, so the rows a batch touches are the same; only the tables grow."""
    log = EventLog(path)
    if id_rows is not None:
        features = [f.model_copy(update={"cardinality": max(id_rows, f.cardinality or 2)})
                    if f.kind is FeatureKind.sparse and f.name.endswith("_id") else f for f in log.spec.features]
        log.spec = log.spec.model_copy(update={"features": features})
    return log


def _runners(log: EventLog, group: str, batch_size: int, workdir: Path) -> list[Callable[[], Runner]]:
    train_days, eval_day = log.days[:-1], log.days[-1]
    features = _features(log)
    train, held_out = _train_held_out(log, features)
    if group == "sparse_rowwise":
        return [
            lambda: FxrecRunner(log, train_days, eval_day, batch_size, workdir, group),
            lambda: PlainRunner(train, held_out, features, batch_size, sparse_gradients=True, fused_adam=True),
        ]
    fuxi_dir = workdir / "fuxictr"
    fuxi_dir.mkdir(exist_ok=True)
    makers: list[Callable[[], Runner]] = [
        lambda: FxrecRunner(log, train_days, eval_day, batch_size, workdir, group),
        lambda: PlainRunner(train, held_out, features, batch_size, sparse_gradients=False),
        lambda: PlainRunner(train, held_out, features, batch_size, sparse_gradients=False, fused_adam=True),
    ]
    makers += [lambda v=v: DeepCTRRunner(train, held_out, features, batch_size, v) for v in PEERS if "deepctr" in v]
    makers += [lambda v=v: FuxiCTRRunner(train, held_out, features, batch_size, v, fuxi_dir)
               for v in PEERS if "fuxictr" in v]
    return makers


def _train_held_out(log: EventLog, features: list[FeatureSpec]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The peers' and the plain reference's in-memory input: training days and the held-out day."""
    train_days, eval_day = log.days[:-1], log.days[-1]
    columns = [f.name for f in features] + ["click"]
    train = _arrays(log.read_all(columns).filter(_day_mask(log, train_days)), features)
    return train, _arrays(log.read_day(eval_day, columns), features)


def _day_mask(log: EventLog, days: list[str]) -> np.ndarray:
    counts = [log.read_day(d, ["event_id"]).num_rows for d in log.days]
    return np.concatenate([np.full(n, d in days) for d, n in zip(log.days, counts, strict=True)])


def measure(log: EventLog, group: str, tables: str, batch_size: int, rounds: int, workdir: Path
            ) -> list[dict[str, Any]]:
    """`rounds` rounds of one epoch per system of `group`, the order rotating per round; then held-out
    logloss / AUC per system. One row per system with its examples/s per round."""
    workdir = workdir / f"{group}_{tables}_b{batch_size}"
    workdir.mkdir()
    runners = [make() for make in _runners(log, group, batch_size, workdir)]
    rates: dict[str, list[float]] = {r.name: [] for r in runners}
    for r in range(rounds):
        for runner in runners[r % len(runners):] + runners[: r % len(runners)]:
            started = time.perf_counter()
            examples = runner.epoch()
            rates[runner.name].append(examples / (time.perf_counter() - started))
            print(f"  {group} {tables} b{batch_size} round {r + 1}/{rounds} {runner.name}: "
                  f"{rates[runner.name][-1]:,.0f} ex/s", file=sys.stderr, flush=True)
    labels = _arrays(log.read_day(log.days[-1], ["click"]), [])["click"]
    rows = []
    for runner in runners:
        probs = np.clip(runner.predict().astype(np.float64), 1e-7, 1 - 1e-7)
        load = getattr(runner, "load_seconds", None)
        rows.append({
            "group": group, "tables": tables, "batch_size": batch_size, "system": runner.name,
            "ex_per_s_median": float(np.median(rates[runner.name])), "ex_per_s_min": float(np.min(rates[runner.name])),
            "ex_per_s_max": float(np.max(rates[runner.name])), "ex_per_s_per_round": rates[runner.name],
            "held_out_logloss": log_loss(labels, probs), "held_out_auc": auc(labels, probs),
            "data_load_s_per_epoch": float(np.mean(load)) if load else None,
        })
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group, table size and batch size: fxrec / each other system, taken round by round (both ran in
    the same round), as median, min and max over rounds, with the per-round values."""
    out: dict[str, dict[str, Any]] = {}
    keys = dict.fromkeys((r["group"], r["tables"], r["batch_size"]) for r in rows)
    for group, tables, batch_size in keys:
        systems = {r["system"]: r for r in rows if (r["group"], r["tables"], r["batch_size"]) == (group, tables, batch_size)}
        ours = np.array(systems["fxrec"]["ex_per_s_per_round"])
        for name, row in systems.items():
            if name == "fxrec":
                continue
            per_round = ours / np.array(row["ex_per_s_per_round"])
            out[f"{group} {tables} b{batch_size}: fxrec / {name}"] = {
                "median": float(np.median(per_round)), "min": float(per_round.min()), "max": float(per_round.max()),
                "per_round": per_round.tolist(),
            }
    return out


def main() -> None:
    args = _common.parse_args(NAME, __doc__.splitlines()[0], extra=[
        (("--batch-sizes",), {"type": int, "nargs": "+", "default": None, "help": "default: 1024 256 (quick: 1024)"}),
        (("--rounds",), {"type": int, "default": None, "help": "epochs per system, interleaved (default 5, quick 3)"}),
        (("--groups",), {"nargs": "+", "choices": GROUPS, "default": list(GROUPS)}),
        (("--tables",), {"nargs": "+", "choices": list(TABLES), "default": list(TABLES)}),
    ])
    torch.set_num_threads(THREADS)
    load_before = list(os.getloadavg())  # a shared machine: record how busy it was
    batch_sizes = args.batch_sizes or ([1024] if args.quick else [1024, 256])
    rounds = args.rounds or (3 if args.quick else 5)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fxrec-bench-") as tmp:
        workdir = Path(tmp)
        path = _simulate(args.quick, workdir)
        for tables in args.tables:
            log = _log(path, TABLES[tables])
            for batch_size in batch_sizes:
                for group in args.groups:
                    rows += measure(log, group, tables, batch_size, rounds, workdir)
        examples = sum(log.read_day(d, ["event_id"]).num_rows for d in log.days[:-1])
        table_rows = {name: {f.name: f.cardinality for f in _sparse(_features(_log(path, rows_)))}
                      for name, rows_ in TABLES.items()}
    columns = ["group", "tables", "batch_size", "system", "ex_per_s_median", "ex_per_s_min", "ex_per_s_max",
               "held_out_logloss", "held_out_auc", "data_load_s_per_epoch"]
    _common.print_table(f"DCNv2 training, examples/s per epoch incl. data loading ({examples:,} examples/epoch, "
                        f"{THREADS} threads, {rounds} interleaved rounds)", rows, columns)
    result_ratios = ratios(rows)
    for key, value in result_ratios.items():
        print(f"{key}: median {value['median']:.3f} (min {value['min']:.3f}, max {value['max']:.3f})")
    conditions = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "default"),
                  "load_average_1_5_15_before": load_before, "load_average_1_5_15_after": list(os.getloadavg())}
    _common.write_result(args, NAME, rows, result_ratios, update_rules=UPDATE_RULES, models=PEERS,
                         table_rows=table_rows, examples_per_epoch=examples, rounds=rounds, conditions=conditions,
                         days=f"all surfaces, train {len(log.days) - 1} day(s), hold out the last",
                         features=[f.name for f in _features(log)])


if __name__ == "__main__":
    main()
