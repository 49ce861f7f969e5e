"""The probe's verdict: per Linear and per candidate format, its error, its time, safe or not, fast or not.

A format is *safe* for a layer when its MERE on the layer's learned input distribution is at most the
threshold (LoKA filters at 0.2), and *fast* when its measured kernel beats float32 by at least
`min_speedup` (1.05). `LayerReport.choice` is the fastest format that is both, the one a dispatcher would
route the layer to (None: keep float32). `to_dict` is plain JSON; `to_table` is text, a table per layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fxrec.lowp.stats import WeightStats


@dataclass(frozen=True)
class FormatResult:
    format: str
    kernel: str  # the kernel that produced the output and the time, or "emulated"
    error: float  # MERE against float32 (fxrec.lowp.error)
    time_s: float | None  # median seconds per call; None when emulated
    speedup: float | None  # float32 time / this time
    safe: bool
    fast: bool


@dataclass(frozen=True)
class LayerReport:
    name: str
    in_features: int
    out_features: int
    rows_seen: int  # input rows the statistics were built from
    weight: WeightStats
    results: list[FormatResult] = field(default_factory=list)  # empty when the layer never ran
    activation_absmax: float | None = None

    @property
    def choice(self) -> str | None:
        """The fastest safe and fast format, or None (float32 stays)."""
        kept = [r for r in self.results if r.safe and r.fast and r.speedup is not None]
        return max(kept, key=lambda r: r.speedup or 0.0).format if kept else None

    def result(self, format: str) -> FormatResult:
        return next(r for r in self.results if r.format == format)


@dataclass(frozen=True)
class ProbeReport:
    layers: list[LayerReport]
    threshold: float
    min_speedup: float
    samples: int  # rows drawn per layer: the batch that is scored and timed
    device: str

    def layer(self, name: str) -> LayerReport:
        return next(layer for layer in self.layers if layer.name == name)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        for row, layer in zip(out["layers"], self.layers, strict=True):
            row["choice"] = layer.choice
        return out

    def to_table(self) -> str:
        head = (
            f"low-precision probe on {self.device}: {self.samples} rows per layer, "
            f"safe = MERE <= {self.threshold:g}, fast = speed-up >= {self.min_speedup:g}"
        )
        blocks = [head]
        columns = ("format", "kernel", "MERE", "time us", "speed-up", "safe", "fast")
        for layer in self.layers:
            w = layer.weight
            title = (
                f"{layer.name}  ({layer.in_features} -> {layer.out_features}, {layer.rows_seen} rows seen, "
                f"|W|max {w.absmax:.3g}, row spread {w.row_absmax_spread:.2f}"
                + (f", |x|max {layer.activation_absmax:.3g}" if layer.activation_absmax is not None else "")
                + f")  choice: {layer.choice or 'fp32'}"
            )
            if not layer.results:
                blocks.append(f"{title}\n  never ran: no statistics")
                continue
            rows = [columns] + [
                (
                    r.format,
                    r.kernel,
                    f"{r.error:.3g}",
                    "-" if r.time_s is None else f"{r.time_s * 1e6:.1f}",
                    "-" if r.speedup is None else f"{r.speedup:.2f}x",
                    "safe" if r.safe else "UNSAFE",
                    "fast" if r.fast else "slow",
                )
                for r in layer.results
            ]
            widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
            lines = [
                "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                for row in rows
            ]
            blocks.append("\n".join([title, *(line.rstrip() for line in lines)]))
        return "\n\n".join(blocks)
