"""LoKA's model mods: changes that make more of a model safe to run in low precision.

A model config's `mods:` block switches them on for the whole model (all off by default):

    mods: {bias: false, block_norm: 256, activation: hardswish}

- `bias: false` — no bias in any nn.Linear (nor fxrec's TokenLinear) but the heads' output layers,
  the Linears that give each task's logit (every `TaskHeads` in the model, a VM channel's heads too).
  LoKA found bias norms that keep growing in training; it also saves the padding traffic of the
  bias vectors. Other additive parameters are left as they are: LayerNorm's affine shift, and the
  offsets added after an einsum (DHEN's GramCross, Kunlun's SumKronLinear).
- `block_norm: k` — BlockNorm (a parameter-free RMSNorm over blocks of k features,
  `fxrec.nn.block_norm`) on the output of every nn.Linear at least k features wide, but the heads'
  output layers: LoKA places it there, in the GEMM's epilogue, so each GEMM's output reaches the next
  one at a known scale. Layers narrower than one block are left as they are (a whole-vector RMSNorm
  is another change); with fxrec's small defaults (widths 16 to 128) `block_norm: 256` changes nothing,
  while `block_norm: 16` normalizes most layers.
- `activation: hardswish` — every SiLU (swish) and GELU module becomes Hardswish,
  x * relu6(x + 3) / 6: the same shape without the exponential that amplifies outliers. ReLU and
  tanh stay. GDPA's score activation (Kunlun's `gdpa_activation`) is a kernel argument, not a
  module, and stays as configured. `hardswish` is also a name every block's `activation:` key accepts.

`Mods(...).apply(model)` rewrites a built model in place; `fxrec.factory.build_model` calls it on every
model after building, so the same seed gives the same weights with or without mods (less the biases
dropped) and a model card rebuilds the same model. With every mod off it changes nothing. Modules a
transfer channel trains with its own optimizer (`own_parameters()`, ExFM's student adapter) are left
alone: that optimizer holds their parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from torch import nn

from fxrec.models.heads import TaskHeads
from fxrec.nn.block_norm import BlockNormLinear
from fxrec.nn.token_mixing import TokenLinear

SWAPPED_ACTIVATIONS = (nn.SiLU, nn.GELU)  # the exponential ones; nn.SiLU is swish


class Mods:
    """Which of LoKA's mods a model gets: see the module doc. Each argument is a key of `mods:`.

    Example::

        changed = Mods(bias=False, block_norm=256, activation="hardswish").apply(model)
        changed["bias"]  # names of the Linears that lost their bias
    """

    def __init__(
        self,
        bias: bool = True,
        block_norm: int | None = None,
        activation: Literal["hardswish"] | None = None,
    ):
        if block_norm is not None and block_norm < 1:
            raise ValueError(
                f"mods: block_norm is a block size >= 1 (LoKA's is 256) or null, got {block_norm}"
            )
        if activation not in (None, "hardswish"):
            raise ValueError(f"mods: activation is hardswish or null, got {activation!r}")
        self.bias = bias
        self.block_norm = block_norm
        self.activation = activation

    @property
    def active(self) -> bool:
        return not self.bias or self.block_norm is not None or self.activation is not None

    def apply(self, model: nn.Module) -> dict[str, list[str]]:
        """Rewrite `model` in place; returns the names of the modules each mod changed."""
        changed: dict[str, list[str]] = {"bias": [], "block_norm": [], "activation": []}
        if not self.active:
            return changed
        outputs = {
            id(layer)
            for heads in model.modules()
            if isinstance(heads, TaskHeads)
            for layer in heads.output_layers().values()
        }
        replaced: dict[int, nn.Module] = {}  # a module reached twice gets the same replacement
        for parent, name, path, child in list(_children(model, _own_parameters(model))):
            if id(child) in replaced:
                setattr(parent, name, replaced[id(child)])
                continue
            new = child
            if isinstance(child, nn.Linear | TokenLinear) and id(child) not in outputs:
                if not self.bias and child.bias is not None:
                    child.bias = None
                    changed["bias"].append(path)
                if (
                    self.block_norm is not None
                    and isinstance(child, nn.Linear)
                    and not isinstance(child, BlockNormLinear)
                    and child.out_features >= self.block_norm
                ):
                    new = BlockNormLinear(child, self.block_norm)
                    changed["block_norm"].append(path)
            elif self.activation == "hardswish" and isinstance(child, SWAPPED_ACTIVATIONS):
                new = nn.Hardswish()
                changed["activation"].append(path)
            if new is not child:
                replaced[id(child)] = new
                setattr(parent, name, new)
        return changed


def _own_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters that modules update with their own optimizer (transfer channels' `own_parameters`)."""
    own: set[int] = set()
    for module in model.modules():
        own_parameters = getattr(module, "own_parameters", None)
        if callable(own_parameters):
            own.update(id(p) for p in own_parameters())
    return own


def _children(
    module: nn.Module, own: set[int], prefix: str = ""
) -> Iterator[tuple[nn.Module, str, str, nn.Module]]:
    """(parent, attribute, dotted path, child) for every submodule, parents first, skipping the subtrees
    whose parameters are all `own`, and nn.MultiheadAttention's (it reads its out_proj's tensors itself)."""
    for name, child in module.named_children():
        parameters = [id(p) for p in child.parameters()]
        if (parameters and all(p in own for p in parameters)) or isinstance(child, nn.MultiheadAttention):
            continue
        path = f"{prefix}{name}"
        yield module, name, path, child
        yield from _children(child, own, f"{path}.")
