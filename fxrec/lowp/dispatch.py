"""LoKA's dispatch: route each Linear of an fxrec model to the fastest number format that is safe for it.

A *plan* maps a Linear's dotted path (as `model.named_modules()` names it) to a format name of
`fxrec.lowp.formats.FORMATS`. `apply_plan(model, plan)` puts a `LowpLinear` in place of each planned
nn.Linear, keeping its Parameters (an optimizer built before still steps them, a state_dict saved before
still loads); `plan_from_probe(report)` makes the plan LoKA's way, from a probe of the model's real inputs
(`fxrec.lowp.Probe`): per Linear, the fastest candidate whose error is at most the threshold and whose
speed-up over float32 is at least `min_speedup`, float32 where none is; `uniform_plan(model, format)` gives
every Linear but the heads' logit layers one format (the all-bf16 / all-int8 baselines).

`LowpLinear` runs its GEMM through an autograd.Function that routes forward and backward separately:
forward y = kernel(x, W) + b in its format (the format's real kernel, its exact emulation where this
machine has none); backward grad_x = grad_y W and grad_W = grad_y^T x in `backward` (fp32, or bf16 with
both operands cast), grad_b = sum of grad_y: the straight-through gradient of the low-precision forward.
The weight is prepared (cast, quantized) once and reused while it is unchanged in eval / no-grad; in
training it is prepared on every step, as low-precision training pays it. Format fp32 with an fp32
backward is nn.Linear itself, bit for bit.

A model config's `dispatch:` block (`Dispatch`) says which plan a model trains with: none (the default,
nothing changes), a format name (`uniform_plan` from the first step) or auto (the trainer probes the
first training day and applies `plan_from_probe` for the rest); the plan in force at the end is saved in
the model card, and loading the model applies it, so inference runs the plan training ended with.

Example::

    with Probe(model) as probe:
        for batch in batches:
            model(batch)
    plan = plan_from_probe(probe.report(), threshold=0.2, min_speedup=1.05)
    apply_plan(model, plan)  # {"interaction.up.0": "bf16", "heads.towers.click.0.0": "fp32", ...}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fxrec.lowp.formats import FORMATS, Format
from fxrec.lowp.report import ProbeReport
from fxrec.models.heads import TaskHeads
from fxrec.nn.block_norm import BlockNormLinear

BACKWARDS = ("fp32", "bf16")
PLANS = ("none", "auto")  # besides a format name: see `Dispatch`
THRESHOLD = 0.2  # LoKA's MERE filter
MIN_SPEEDUP = 1.05  # LoKA's speed-up filter

Kernel = Callable[[torch.Tensor], torch.Tensor]


def _check_format(format: str, what: str = "format") -> Format:
    if format not in FORMATS:
        raise ValueError(f"unknown {what} {format!r}; formats: {', '.join(FORMATS)}")
    return FORMATS[format]


def _check_backward(backward: str) -> str:
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward {backward!r}; backwards: {', '.join(BACKWARDS)}")
    return backward


class _LowpMatmul(torch.autograd.Function):
    """y = kernel(x) + b with the prepared forward kernel (the format's emulation where there is none, or
    where the kernel turns down this shape); the backward GEMMs in `backward`'s format."""

    @staticmethod
    def forward(ctx, x, weight, bias, kernel, fmt, backward):  # noqa: ANN001, ANN205 (autograd's signature)
        y = None
        if kernel is not None:
            try:
                y = kernel(x)
            except (RuntimeError, NotImplementedError):
                y = None
        if y is None:
            y = fmt.emulate(x, weight).to(weight.dtype)
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x, weight)
        ctx.backward = backward
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if ctx.backward == "bf16":
            g = grad_y.to(torch.bfloat16)
            if need_x:
                grad_x = (g @ weight.to(torch.bfloat16)).to(x.dtype)
            if need_w:
                grad_w = (g.T @ x.to(torch.bfloat16)).to(weight.dtype)
        else:
            if need_x:
                grad_x = grad_y @ weight
            if need_w:
                grad_w = grad_y.T @ x
        if need_b and ctx.has_bias:
            grad_b = grad_y.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


class LowpLinear(nn.Linear):
    """An nn.Linear whose GEMM runs in `format` (a FORMATS name) forward and in `backward` backward.

    The same parameters and state_dict keys as nn.Linear. `LowpLinear.from_linear(linear, format)` takes
    over an existing Linear's Parameters (a `BlockNormLinear` keeps its BlockNorm, as `norm`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        format: str = "fp32",
        backward: Literal["fp32", "bf16"] = "fp32",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup(format, backward)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, format: str = "fp32", backward: Literal["fp32", "bf16"] = "fp32"
    ) -> LowpLinear:
        """A LowpLinear holding `linear`'s own Parameters (no new initialization, no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features = linear.in_features
        new.out_features = linear.out_features
        new.weight = linear.weight
        new.register_parameter("bias", linear.bias)
        if isinstance(linear, BlockNormLinear):
            new.norm = linear.norm  # parameter-free: the state_dict keys stay weight and bias
        new._setup(format, backward)
        return new

    def _setup(self, format: str, backward: str) -> None:
        self.format = format
        self.backward = backward
        self._prepared: tuple[tuple, Kernel | None] | None = None  # (weight key, kernel) for eval
        self._has_kernel: dict[tuple, bool] = {}  # per (format, device, dtype): does a real kernel run?
        self.frozen: tuple[str, ...] = ()  # the prepared weight's buffers, once `freeze` dropped the weight

    def freeze(self) -> None:
        """For inference only: keep the weight as the format prepares it (int8 codes and scales, bf16
        values, ...) in buffers `weight_<name>`, drop the float32 weight, run the real kernel on them.
        fp32 and a format without a kernel on this machine stay as they are. A served model holds only
        the prepared bytes; it cannot train or change format any more."""
        if self.frozen or self.format == "fp32":
            return
        fmt = FORMATS[self.format]
        weight = self.weight.detach()
        if fmt.kernel(weight) is None:
            return
        prepared = fmt.prepare(weight)
        del self.weight
        for key, tensor in prepared.items():
            self.register_buffer(f"weight_{key}", tensor)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.frozen = tuple(prepared)

    # `format` and `backward` are checked on every assignment: a plan can change them in place.
    def __setattr__(self, name: str, value: object) -> None:
        if name == "format":
            if self.__dict__.get("frozen"):
                raise ValueError(
                    f"a frozen LowpLinear keeps its format ({self.format}); quantize the float32 model again"
                )
            _check_format(value)  # type: ignore[arg-type]
            self.__dict__["_prepared"] = None
        elif name == "backward":
            _check_backward(value)  # type: ignore[arg-type]
        super().__setattr__(name, value)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_prepared"] = None  # a prepared kernel is a closure: prepared again after unpickling
        return state

    def _kernel(self, weight: torch.Tensor) -> Kernel | None:
        """The format's real kernel with `weight` prepared, or None: use the emulation."""
        fmt = FORMATS[self.format]
        key = (self.format, weight.device, weight.dtype)
        if key not in self._has_kernel:  # the one probing call with zero rows, once per layer and format
            kernel = fmt.kernel(weight)
            self._has_kernel[key] = kernel is not None
            return kernel
        return fmt.build(weight) if self._has_kernel[key] else None

    def _prepare(self, weight: torch.Tensor) -> Kernel | None:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return self._kernel(weight)  # training: the weight moves every step; prepare it again
        key = (self.format, weight.data_ptr(), weight._version, weight.device, weight.dtype, weight.shape)
        if self._prepared is None or self._prepared[0] != key:
            self._prepared = (key, self._kernel(weight))
        return self._prepared[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            y = self._frozen(x)
        elif self.format == "fp32" and self.backward == "fp32":
            y = F.linear(x, self.weight, self.bias)
        else:
            y = self._lowp(x)
        norm = getattr(self, "norm", None)
        return norm(y) if norm is not None else y

    def _frozen(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        prepared = {key: getattr(self, f"weight_{key}") for key in self.frozen}
        y = FORMATS[self.format].run(x.reshape(-1, self.in_features).float(), **prepared)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def _lowp(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.weight.dtype)
        kernel = self._prepare(self.weight.detach())
        y = _LowpMatmul.apply(x2, self.weight, self.bias, kernel, FORMATS[self.format], self.backward)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, format={self.format}, backward={self.backward}"


# -- plans ---------------------------------------------------------------------------------------
def _logit_layers(model: nn.Module) -> set[int]:
    return {
        id(layer)
        for heads in model.modules()
        if isinstance(heads, TaskHeads)
        for layer in heads.output_layers().values()
    }


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear a plan can name, by dotted path: not those inside nn.MultiheadAttention, which
    reads its out_proj's tensors itself."""
    inside_attention = {
        id(m)
        for attention in model.modules()
        if isinstance(attention, nn.MultiheadAttention)
        for m in attention.modules()
    }
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and id(module) not in inside_attention
    }


def dispatchable(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linears fxrec plans: every one of `linears(model)` but the heads' logit layers (each task's
    output Linear, `TaskHeads.output_layers()`), which stay float32."""
    logits = _logit_layers(model)
    return {name: layer for name, layer in linears(model).items() if id(layer) not in logits}


def uniform_plan(model: nn.Module, format: str) -> dict[str, str]:
    """Every Linear of `model` but the heads' logit layers in `format` (the all-bf16 / all-int8 baselines)."""
    _check_format(format)
    return dict.fromkeys(dispatchable(model), format)


def plan_from_probe(
    report: ProbeReport, threshold: float | None = None, min_speedup: float | None = None
) -> dict[str, str]:
    """Per probed Linear, the fastest candidate with MERE <= `threshold` and speed-up over fp32 >=
    `min_speedup` (the report's own filters when None: `LayerReport.choice`), else "fp32". A layer
    that never ran, or a candidate without a measured time (emulated), is never chosen."""
    threshold = report.threshold if threshold is None else threshold
    min_speedup = report.min_speedup if min_speedup is None else min_speedup
    plan = {}
    for layer in report.layers:
        kept = [
            r
            for r in layer.results
            if r.format != "fp32"
            and r.error <= threshold
            and r.speedup is not None
            and r.speedup >= min_speedup
        ]
        plan[layer.name] = max(kept, key=lambda r: r.speedup or 0.0).format if kept else "fp32"
    return plan


def apply_plan(
    model: nn.Module, plan: Mapping[str, str], backward: Literal["fp32", "bf16"] = "fp32"
) -> list[str]:
    """Put each planned Linear of `model` in its format, in place; returns the paths that changed.

    A plain nn.Linear becomes a `LowpLinear` with the same Parameter objects (fp32 entries with an fp32
    backward leave it plain); a LowpLinear already there gets the new format. Every key and format is
    checked before anything changes: an unknown path or format is a ValueError naming it and listing
    the valid ones.
    """
    _check_backward(backward)
    valid = linears(model)
    for path, format in plan.items():
        if path not in valid:
            raise ValueError(
                f"dispatch plan: {path!r} is not a Linear of the model; Linears: {', '.join(valid)}"
            )
        _check_format(format, f"format for {path!r}")
    replaced: dict[int, nn.Module] = {}
    changed = []
    for path, format in plan.items():
        layer = valid[path]
        if isinstance(layer, LowpLinear):
            if (layer.format, layer.backward) != (format, backward):
                layer.format, layer.backward = format, backward
                changed.append(path)
        elif format != "fp32" or backward != "fp32":
            replaced[id(layer)] = LowpLinear.from_linear(layer, format, backward)
            changed.append(path)
    if replaced:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if id(child) in replaced:
                    setattr(parent, name, replaced[id(child)])
    return changed


def current_plan(model: nn.Module) -> dict[str, str]:
    """{path: format} of every LowpLinear in `model`: the plan in force (plain Linears are fp32)."""
    return {name: m.format for name, m in model.named_modules() if isinstance(m, LowpLinear)}


class Dispatch:
    """A model's `dispatch:` config block: which plan it trains with, and LoKA's filters for `auto`.

    - `plan`: "none" (the default: plain Linears, nothing changes), a format name of FORMATS (every
      Linear but the logit layers in it from the first step: `uniform_plan`), or "auto" (the trainer
      probes the first training day, then applies `plan_from_probe` for the rest of training).
    - `threshold`, `min_speedup`: the filters of `auto` (LoKA's 0.2 MERE and 1.05x). The probe's speed-up
      is the forward GEMM's with its weight prepared (as in inference); in training each step also pays
      the weight's preparation and the backward GEMMs (2/3 of the FLOPs, fp32 unless `backward: bf16`).
    - `backward`: the format of the backward GEMMs of every dispatched Linear, fp32 or bf16.
    """

    def __init__(
        self,
        plan: str = "none",
        threshold: float = THRESHOLD,
        min_speedup: float = MIN_SPEEDUP,
        backward: Literal["fp32", "bf16"] = "fp32",
    ) -> None:
        if plan not in PLANS and plan not in FORMATS:
            raise ValueError(f"dispatch: plan is none, auto or a format ({', '.join(FORMATS)}), got {plan!r}")
        if threshold < 0 or min_speedup < 0:
            raise ValueError(
                f"dispatch: threshold and min_speedup are >= 0, got {threshold} and {min_speedup}"
            )
        self.plan = plan
        self.threshold = threshold
        self.min_speedup = min_speedup
        self.backward = _check_backward(backward)

    @property
    def active(self) -> bool:
        return self.plan != "none"

    @property
    def auto(self) -> bool:
        return self.plan == "auto"

    def initial_plan(self, model: nn.Module) -> dict[str, str]:
        """The plan a model starts training with: the uniform one for a format, none otherwise."""
        return uniform_plan(model, self.plan) if self.plan in FORMATS else {}

    def choose(self, report: ProbeReport) -> dict[str, str]:
        """`auto`'s plan from a probe of the model."""
        return plan_from_probe(report, self.threshold, self.min_speedup)
