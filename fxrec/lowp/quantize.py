"""Quantized serving: a trained model with row-wise int8/int4 embedding tables and low-precision Linears.

A `QuantPlan` names a format for every part of a model that can be quantized:

- each embedding table (`tables`): `fp32`, `fp16`, `int8` or `int4`, row-wise (a scale and a bias per
  row, in fp16, beside the row's codes). The tables become TorchRec's quantized collection
  (`torchrec.quant` EmbeddingBagCollection / EmbeddingCollection), which looks rows up with FBGEMM's
  IntNBit TBE kernels and dequantizes to float32 in the pooling;
- each nn.Linear (`linears`, by its dotted path, `fxrec.lowp.dispatch.linears`; the heads' logit layers
  included): a name of `fxrec.lowp.formats.FORMATS` (`fp32`, `bf16`, `int8_rowwise`, ...), run by
  `fxrec.lowp.dispatch.LowpLinear`, frozen: it keeps the prepared weight (int8 codes and scales, bf16
  values) instead of the float32 one.

`quantize(model, plan)` returns a quantized copy for inference (the original is untouched); a pruned
model's masks are folded into its weights first (`Pruner.fold`). Frequency
admission (`fxrec.nn.admission`) is folded into the tables first: a row that training never admitted
is looked up as row 0, so it is given row 0's values and the per-row counts are dropped (when any table
is quantized); the copy scores every id as the original does, with 4 bytes less per row.

`model_bytes(model)` is what a server holds: the bytes of every parameter and buffer storage, each
storage once. TorchRec's quantized rows are padded to 16 bytes, so at the small widths of fxrec's VMs
(16 floats = 64 bytes) an int8 row (16 codes + 4 bytes of scale and bias) takes 32 bytes and an int4 row
(8 + 4) takes 16: tables shrink 2x and 4x, not 4x and 8x.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.ao.quantization as tq
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig
from torchrec.modules.embedding_configs import QuantConfig
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection

from fxrec.lowp.dispatch import LowpLinear, apply_plan, linears
from fxrec.lowp.formats import FORMATS
from fxrec.lowp.pruning import Pruner
from fxrec.nn.embeddings import SparseArch

TABLE_FORMATS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "int8": torch.qint8,
    "int4": torch.quint4x2,
}
"""A table's format -> the dtype TorchRec's QuantConfig names it by."""


@dataclass(frozen=True)
class QuantPlan:
    """A format per embedding table and per Linear; anything not named stays float32."""

    tables: dict[str, str] = field(default_factory=dict)
    linears: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {t: f for t, f in self.tables.items() if f not in TABLE_FORMATS}
        if bad:
            raise ValueError(f"table formats {bad} are not among {list(TABLE_FORMATS)}")
        bad = {name: f for name, f in self.linears.items() if f not in FORMATS}
        if bad:
            raise ValueError(f"Linear formats {bad} are not among {list(FORMATS)}")

    @classmethod
    def for_model(cls, model: nn.Module, table: str = "fp32", linear: str = "fp32") -> QuantPlan:
        """Every table of the model in `table`, every Linear in `linear`."""
        return cls({name: table for name in table_names(model)}, {path: linear for path in linears(model)})

    def parts(self) -> list[tuple[str, str]]:
        """("table", name) and ("linear", path) for every part the plan names."""
        return [("table", name) for name in self.tables] + [("linear", path) for path in self.linears]

    def format(self, part: tuple[str, str]) -> str:
        kind, name = part
        return (self.tables if kind == "table" else self.linears)[name]

    def with_format(self, part: tuple[str, str], format: str) -> QuantPlan:
        kind, name = part
        if kind == "table":
            return QuantPlan({**self.tables, name: format}, dict(self.linears))
        return QuantPlan(dict(self.tables), {**self.linears, name: format})

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"tables": dict(self.tables), "linears": dict(self.linears)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, str]]) -> QuantPlan:
        return cls(dict(data.get("tables", {})), dict(data.get("linears", {})))


def _sparse_arch(model: nn.Module) -> SparseArch:
    arch = getattr(model, "sparse_arch", None)
    if not isinstance(arch, SparseArch):
        raise ValueError(
            f"{type(model).__name__} has no SparseArch (`sparse_arch`): not an fxrec RankingModel"
        )
    return arch


def _table_configs(arch: SparseArch) -> list[EmbeddingBagConfig] | list[EmbeddingConfig]:
    collection = arch.collection
    if isinstance(collection, EmbeddingCollection):
        return list(collection.embedding_configs())
    return list(collection.embedding_bag_configs())  # type: ignore[operator]


def table_names(model: nn.Module) -> list[str]:
    """The model's embedding tables, in TorchRec's order."""
    return [config.name for config in _table_configs(_sparse_arch(model))]


def _table_weights(arch: SparseArch) -> dict[str, torch.Tensor]:
    state = arch.collection.state_dict()
    prefix = "embeddings" if isinstance(arch.collection, EmbeddingCollection) else "embedding_bags"
    return {config.name: state[f"{prefix}.{config.name}.weight"].detach() for config in _table_configs(arch)}


@torch.no_grad()
def _fold_admission(arch: SparseArch, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows never admitted are looked up as row 0: give them row 0's values; the counts go."""
    admission = arch.admission
    if admission.min_count <= 0:
        return weights
    folded = {}
    for table, weight in weights.items():
        counts = getattr(admission, f"count_{table}")
        weight = weight.clone()
        weight[counts < admission.min_count] = weight[0].clone()
        folded[table] = weight
        delattr(admission, f"count_{table}")
    admission.min_count = 0
    return folded


def _quantize_tables(arch: SparseArch, formats: Mapping[str, str]) -> None:
    if all(f == "fp32" for f in formats.values()):
        return  # the float collection stays, with its admission counts and its fused lookup
    weights = _fold_admission(arch, _table_weights(arch))
    configs = [copy.copy(config) for config in _table_configs(arch)]
    jagged = isinstance(arch.collection, EmbeddingCollection)
    plain: nn.Module = (
        EmbeddingCollection(tables=configs) if jagged else EmbeddingBagCollection(tables=configs)
    )
    prefix = "embeddings" if jagged else "embedding_bags"
    plain.load_state_dict({f"{prefix}.{name}.weight": w for name, w in weights.items()})
    plain.qconfig = QuantConfig(
        activation=tq.PlaceholderObserver.with_args(dtype=torch.float),
        weight=tq.PlaceholderObserver.with_args(dtype=torch.qint8),
        per_table_weight_dtype={name: TABLE_FORMATS[formats.get(name, "fp32")] for name in weights},
    )
    quantized_class = QuantEmbeddingCollection if jagged else QuantEmbeddingBagCollection
    arch.collection = quantized_class.from_float(plain)
    arch.fused = False
    arch._direct = None


def quantize(model: nn.Module, plan: QuantPlan) -> nn.Module:
    """A quantized copy of `model` for inference, in eval mode; `model` itself is not changed."""
    _check_tables(model, plan)
    return quantize_in_place(copy.deepcopy(model), plan)


def _check_tables(model: nn.Module, plan: QuantPlan) -> None:
    unknown_tables = sorted(set(plan.tables) - set(table_names(model)))
    if unknown_tables:
        raise ValueError(f"the plan names tables {unknown_tables}; the model has {table_names(model)}")


def quantize_in_place(model: nn.Module, plan: QuantPlan) -> nn.Module:
    """`quantize` without the copy: `model` itself becomes the quantized model (a model built only to
    load quantized weights into, as `fxrec.factory.load_model` does, needs no second copy of its tables)."""
    _check_tables(model, plan)
    quantized = Pruner.fold(model)
    _quantize_tables(_sparse_arch(quantized), plan.tables)
    lowered = {path: f for path, f in plan.linears.items() if f != "fp32"}
    if lowered:
        apply_plan(quantized, lowered)
    for module in quantized.modules():
        if isinstance(module, LowpLinear):
            module.freeze()
    return quantized.eval()


def _storages(model: nn.Module) -> Iterator[tuple[int, int]]:
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor = getattr(tensor, "elem", tensor)  # TorchRec's packed int4/int2 wrap their uint8 bytes
        storage = tensor.untyped_storage()
        yield storage.data_ptr(), storage.nbytes()


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer storage the model holds, each storage counted once."""
    return sum(dict(_storages(model)).values())
