"""The schemas of fxrec's custom torch ops, declared once here; kernels register against them elsewhere.

Two namespaces, one per kernel family (both run inside the backends' autograd.Functions, which own the
gradients; the ops themselves have no autograd kernel):

- `torch.ops.fxrec_native.*`: the C++ CPU kernels of `fxrec/ops/native/*.cpp`. The C++ sources only
  register implementations (TORCH_LIBRARY_IMPL), when `fxrec.ops.native.load()` builds them.
- `torch.ops.fxrec_triton.*`: the Triton kernels of `fxrec/ops/*/triton.py`, which register their
  implementations (any device Triton runs on) when imported. Launching the kernels through an op, not
  straight from the autograd.Function, is what lets dispatch-level tools see them (FlopCounterMode,
  torch.compile; the fake implementations below give their output shapes).

Declaring the schemas in Python, at `import fxrec.ops`, means the ops exist before their kernels are
built or imported, so `fxrec.ops.flops` attaches its FLOP formulas at import too: a FlopCounterMode
copies torch's formula registry when it is created, and the first call of an op (which builds or imports
its kernel) often runs inside one.

`window` is -1 for "no window" (a schema int cannot be None). The Triton ops also take the longest
query / key length of the batch, which sizes their launch grids without a device sync.
"""

from __future__ import annotations

import torch
from torch.library import Library

NATIVE = Library("fxrec_native", "DEF")
NATIVE.define(
    "jagged_attention_forward(Tensor q, Tensor k, Tensor v, Tensor q_offsets, Tensor k_offsets, bool causal, "
    "int window, float scale) -> (Tensor, Tensor)"
)
NATIVE.define(
    "jagged_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "Tensor q_offsets, Tensor k_offsets, bool causal, int window, float scale) "
    "-> (Tensor, Tensor, Tensor)"
)
NATIVE.define(
    "gdpa_forward(Tensor q, Tensor k, Tensor v, Tensor offsets, str activation, float scale, int window) "
    "-> Tensor"
)
NATIVE.define(
    "gdpa_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor offsets, str activation, "
    "float scale, int window) -> (Tensor, Tensor, Tensor)"
)

TRITON = Library("fxrec_triton", "DEF")
TRITON.define(
    "jagged_attention_forward(Tensor q, Tensor k, Tensor v, Tensor q_offsets, Tensor k_offsets, bool causal, "
    "int window, float scale, float out_scale, int max_q_len, int max_k_len) -> (Tensor, Tensor)"
)
TRITON.define(
    "jagged_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "Tensor q_offsets, Tensor k_offsets, bool causal, int window, float scale, float out_scale, "
    "int max_q_len, int max_k_len) -> (Tensor, Tensor, Tensor)"
)
TRITON.define(
    "gdpa_forward(Tensor q, Tensor k, Tensor v, Tensor offsets, str activation, float scale, int window, "
    "int max_len) -> Tensor"
)
TRITON.define(
    "gdpa_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor offsets, str activation, "
    "float scale, int window, int max_len) -> (Tensor, Tensor, Tensor)"
)


@torch.library.register_fake("fxrec_triton::jagged_attention_forward", lib=TRITON)
def _attention_forward_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (rows, H, D), v (keys, H, Dv) -> out (rows, H, Dv) in q's dtype, log-sum-exp (rows, H) fp32."""
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2]), q.new_empty(q.shape[:2], dtype=torch.float32)


@torch.library.register_fake("fxrec_triton::jagged_attention_backward", lib=TRITON)
def _attention_backward_fake(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@torch.library.register_fake("fxrec_triton::gdpa_forward", lib=TRITON)
def _gdpa_forward_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: object) -> torch.Tensor:
    """q (rows, H, D), v (B, T, H, Dv) -> (rows, H, Dv)."""
    return q.new_empty(q.shape[0], q.shape[1], v.shape[3])


@torch.library.register_fake("fxrec_triton::gdpa_backward", lib=TRITON)
def _gdpa_backward_fake(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
