"""The LoKA probe: learn each Linear's input distribution while the model runs, then score every
low-precision format for every Linear offline.

Online, `Probe(model).attach()` (or `with Probe(model) as probe:`) puts a forward pre-hook on every
nn.Linear of the model; each call folds the layer's input rows into its `RunningMoments` (every `every`-th
call, to bound the cost during training). `detach()` removes every hook. Inputs of any shape (..., F) are
rows of F features: (B, F) dense layers and (B, n, F) token layers alike.

Offline, `report()` takes each Linear that ran, draws `samples` rows from N(mean, cov) of its inputs, and
for every candidate format (fxrec.lowp.formats) computes y = x W^T against float32 (the bias is left out:
it is added in float32 in every recipe), the MERE (fxrec.lowp.error), and the median time of the format's
real kernel on this machine. Formats without a kernel here are scored on their emulation and left untimed,
so never fast. The result is a `ProbeReport`.

Typical use, over a trained fxrec model::

    with Probe(model) as probe:
        for batch in frame.batches(1024):
            model(batch)
    print(probe.report().to_table())
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from fxrec.lowp.error import EPS_REL, relative_error
from fxrec.lowp.formats import FORMATS, Format
from fxrec.lowp.report import FormatResult, LayerReport, ProbeReport
from fxrec.lowp.stats import RunningMoments, WeightStats, weight_stats
from fxrec.lowp.timing import median_time

THRESHOLD = 0.2  # LoKA's MERE filter
MIN_SPEEDUP = 1.05  # LoKA's speed-up filter


class Probe:
    """Running input statistics of every nn.Linear in `model` (or those `include(name, module)` keeps)."""

    def __init__(
        self,
        model: nn.Module,
        every: int = 1,
        include: Callable[[str, nn.Linear], bool] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.layers: dict[str, nn.Linear] = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and (include is None or include(name, module))
        }
        self.moments: dict[str, RunningMoments] = {
            name: RunningMoments(layer.in_features, device=layer.weight.device)
            for name, layer in self.layers.items()
        }
        self._calls: dict[str, int] = dict.fromkeys(self.layers, 0)
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> Probe:
        if self._handles:
            return self
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_pre_hook(self._hook(name)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Probe:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        moments = self.moments[name]

        def observe(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            calls = self._calls[name]
            self._calls[name] = calls + 1
            if calls % self.every == 0:
                moments.update(inputs[0])

        return observe

    def weight_stats(self) -> dict[str, WeightStats]:
        return {name: weight_stats(layer) for name, layer in self.layers.items()}

    @torch.no_grad()
    def report(
        self,
        formats: Iterable[str | Format] | None = None,
        samples: int = 256,
        repeats: int = 5,
        threshold: float = THRESHOLD,
        min_speedup: float = MIN_SPEEDUP,
        eps_rel: float = EPS_REL,
        seed: int = 0,
    ) -> ProbeReport:
        """Score `formats` (names in fxrec.lowp.formats.FORMATS, or Format objects; default all) on
        every probed Linear; fp32 is always timed as the reference and listed first."""
        chosen = [FORMATS[f] if isinstance(f, str) else f for f in (formats or FORMATS)]
        chosen = [FORMATS["fp32"], *(f for f in chosen if f.name != "fp32")]
        generator = torch.Generator().manual_seed(seed)
        layers = []
        device = "cpu"
        for name, layer in self.layers.items():
            moments = self.moments[name]
            w = layer.weight.detach().float()
            device = str(w.device)
            seen = moments.count
            results = []
            if seen:
                x = moments.sample(samples, generator).to(w.device)
                results = self._score(x, w, chosen, repeats, threshold, min_speedup, eps_rel)
            layers.append(
                LayerReport(
                    name=name,
                    in_features=layer.in_features,
                    out_features=layer.out_features,
                    rows_seen=seen,
                    weight=weight_stats(layer),
                    results=results,
                    activation_absmax=float(moments.absmax.max()) if seen else None,
                )
            )
        return ProbeReport(
            layers, threshold=threshold, min_speedup=min_speedup, samples=samples, device=device
        )

    @staticmethod
    def _score(
        x: torch.Tensor,
        w: torch.Tensor,
        formats: list[Format],
        repeats: int,
        threshold: float,
        min_speedup: float,
        eps_rel: float,
    ) -> list[FormatResult]:
        ref = x @ w.T
        base_time: float | None = None
        results = []
        for fmt in formats:
            kernel = fmt.kernel(w)
            y = None
            if kernel is not None:
                try:
                    y = kernel(x)
                except (RuntimeError, NotImplementedError):
                    kernel = None
            if y is None:
                y = fmt.emulate(x, w)
            error = relative_error(y, ref, eps_rel)
            seconds = median_time(kernel, x, repeats) if kernel is not None else None
            if fmt.name == "fp32":
                base_time = seconds
            speedup = base_time / seconds if (seconds and base_time) else None
            results.append(
                FormatResult(
                    format=fmt.name,
                    kernel=fmt.kernel_name if kernel is not None else "emulated",
                    error=error,
                    time_s=seconds,
                    speedup=speedup,
                    safe=error <= threshold,
                    fast=speedup is not None and speedup >= min_speedup,
                )
            )
        return results
