"""The candidate number formats of a Linear's GEMM y = x W^T, each as an exact emulation and, where this
machine has one, a real kernel.

Every candidate takes float32 activations x (M, K) and returns float32 y (M, N); the weight W (N, K) is
prepared once, ahead of the calls (as a served model would hold it), and anything done to x per call
(casting, dynamic scaling, quantizing, dequantizing y) is part of the kernel, and of its time.

- `fp32`: the reference, torch.mm.
- `bf16`, `fp16`: x and W cast, torch.mm in that dtype (float32 accumulation is the emulation's).
- `int8_rowwise`: dynamic int8, a scale per row of x (absmax / 127) and per output channel of W,
  symmetric round-to-nearest into [-127, 127], int32 accumulation, y = acc * s_x * s_w.
  Kernel: `torch._int_mm`. `int8_tensorwise`: the same with one scale for x and one for W.
- `fp8_{e4m3,e5m2}_{tensorwise,rowwise}`: x and W scaled to the format's largest finite value (per tensor,
  or per row of x and per output channel of W), cast to torch.float8_e4m3fn / float8_e5m2, y computed
  from the dequantized values. Kernel: `torch._scaled_mm` with float32 output.

The emulations reproduce the kernels' arithmetic: the int8 one is bit-exact (the int32 sums are exact in
float64), the fp8 ones differ from a kernel only in float32 summation order. A format with no kernel
here (`kernel(w)` returns None) is still scored on its emulation, but has no time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Kernel = Callable[[torch.Tensor], torch.Tensor]
_SMALLEST_SCALE = 1e-12  # an all-zero row or tensor quantizes to zeros, not NaN


def _per_output(scale: torch.Tensor) -> torch.Tensor:
    """A weight's scale laid along y's columns: (N, 1) -> (1, N); a tensorwise 0-d scale as is."""
    return scale.reshape(1, -1) if scale.dim() else scale


def _absmax_scale(t: torch.Tensor, largest: float, rowwise: bool) -> torch.Tensor:
    """Dequantization scale: absmax / largest, per row (shape (rows, 1)) or per tensor (0-d)."""
    absmax = t.abs().amax(dim=1, keepdim=True) if rowwise else t.abs().amax()
    return (absmax.float() / largest).clamp(min=_SMALLEST_SCALE)


class Format:
    """One candidate: `emulate(x, w)` always works; `kernel(w)` is a prepared real kernel or None.

    A kernel is `run(x, **prepare(w))`: `prepare` turns the weight into the tensors the kernel reads (cast,
    quantized, scaled, laid out), once; `run` does the per-call work. A served model keeps only the
    prepared tensors (`fxrec.lowp.dispatch.LowpLinear.freeze`)."""

    name: str = ""
    kernel_name: str = ""

    def emulate(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def run(self, x: torch.Tensor, **prepared: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def build(self, w: torch.Tensor) -> Kernel:
        """The real kernel with `w` prepared, unchecked."""
        prepared = self.prepare(w)
        return lambda x: self.run(x, **prepared)

    def kernel(self, w: torch.Tensor) -> Kernel | None:
        """The real kernel with `w` prepared, or None where it does not run on w's device and shape
        (checked with one call on a few zero rows)."""
        try:
            fn = self.build(w)
            fn(torch.zeros(16, w.shape[1], device=w.device))
        except (RuntimeError, NotImplementedError, TypeError, AttributeError):
            return None
        return fn

    def __repr__(self) -> str:
        return f"Format({self.name})"


class Fp32(Format):
    name = "fp32"
    kernel_name = "torch.mm"

    def emulate(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x.float() @ w.float().T

    def prepare(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"wt": w.float().T}

    def run(self, x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
        return torch.mm(x, wt)


class FloatCast(Format):
    """bf16 or fp16: both operands rounded to the dtype."""

    kernel_name = "torch.mm"

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def emulate(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype).float() @ w.to(self.dtype).float().T

    def prepare(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"wt": w.to(self.dtype).T}

    def run(self, x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
        return torch.mm(x.to(self.dtype), wt).float()


def quantize_int8(t: torch.Tensor, rowwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8: (q, scale) with t ~= q * scale, q = round(t / scale) in [-127, 127]."""
    scale = _absmax_scale(t, 127.0, rowwise)
    q = torch.round(t.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8(Format):
    """Dynamic int8: x quantized per call, W once; int32 accumulation, float32 dequantization."""

    kernel_name = "torch._int_mm"

    def __init__(self, rowwise: bool) -> None:
        self.rowwise = rowwise
        self.name = "int8_rowwise" if rowwise else "int8_tensorwise"

    def emulate(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        qx, sx = quantize_int8(x, self.rowwise)
        qw, sw = quantize_int8(w, self.rowwise)
        acc = (qx.double() @ qw.double().T).float()  # exact integers, rounded to float32 as int32 would be
        return acc * sx * _per_output(sw)

    def prepare(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        qw, sw = quantize_int8(w, self.rowwise)
        return {"qwt": qw.T, "swt": _per_output(sw)}

    def run(self, x: torch.Tensor, qwt: torch.Tensor, swt: torch.Tensor) -> torch.Tensor:
        qx, sx = quantize_int8(x, self.rowwise)
        return torch._int_mm(qx, qwt).float() * sx * swt


class Fp8(Format):
    """fp8 with absmax scaling to the format's largest finite value."""

    kernel_name = "torch._scaled_mm"

    def __init__(self, dtype: torch.dtype, rowwise: bool) -> None:
        self.dtype = dtype
        self.rowwise = rowwise
        self.largest = float(torch.finfo(dtype).max)
        kind = "e4m3" if dtype == torch.float8_e4m3fn else "e5m2"
        self.name = f"fp8_{kind}_{'rowwise' if rowwise else 'tensorwise'}"

    def quantize(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = _absmax_scale(t, self.largest, self.rowwise)
        q = (t.float() / scale).clamp(-self.largest, self.largest).to(self.dtype)
        return q, scale

    def emulate(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        qx, sx = self.quantize(x)
        qw, sw = self.quantize(w)
        return (qx.float() * sx) @ (qw.float() * sw).T  # sw (N, 1) scales W's rows

    def prepare(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        qw, sw = self.quantize(w)
        return {"qwt": qw.T, "swt": _per_output(sw)}  # column-major (K, N), as _scaled_mm wants it

    def run(self, x: torch.Tensor, qwt: torch.Tensor, swt: torch.Tensor) -> torch.Tensor:
        qx, sx = self.quantize(x)
        return torch._scaled_mm(qx, qwt, scale_a=sx, scale_b=swt, out_dtype=torch.float32)


def _formats() -> dict[str, Format]:
    candidates: list[Format] = [
        Fp32(),
        FloatCast("bf16", torch.bfloat16),
        FloatCast("fp16", torch.float16),
        Int8(rowwise=True),
        Int8(rowwise=False),
    ]
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        candidates += [Fp8(dtype, rowwise=False), Fp8(dtype, rowwise=True)]
    return {f.name: f for f in candidates}


FORMATS: dict[str, Format] = _formats()
"""Every candidate by name, fp32 (the reference) first."""
