"""The report's low-precision probe section as one compact table: a row per Linear, a column per format.

The probe (fxrec.lowp, run by fxrec.jobs.probe) gives every Linear of the FM a list of format results;
report.json keeps them whole, and report.html shows them side by side: each format's error (MERE against
float32) and speed-up over float32 in one cell, marked safe/unsafe and fast/slow, and the layer's choice.
A model with many Linears shows its `limit` biggest GEMMs (in x out), in model order; report.json and the
model's probe.json list every one.
"""

from __future__ import annotations

LIMIT = 40


def _error(value: float) -> str:
    return (
        "0"
        if value == 0
        else f"{value:.2g}"
        if value < 1e-3
        else f"{value:.3f}"
        if value < 10
        else f"{value:.3g}"
    )


def probe_table(probe: dict, limit: int = LIMIT) -> dict:
    """What report.html.j2 draws from `report.probe`: formats, rows of cells, and what was left out."""
    ran = [layer for layer in probe["layers"] if layer["results"]]
    formats = list(
        dict.fromkeys(r["format"] for layer in ran for r in layer["results"] if r["format"] != "fp32")
    )
    shown = ran
    if len(ran) > limit:
        biggest = sorted(ran, key=lambda layer: layer["in_features"] * layer["out_features"], reverse=True)[
            :limit
        ]
        keep = {id(layer) for layer in biggest}
        shown = [layer for layer in ran if id(layer) in keep]
    rows = []
    for layer in shown:
        results = {r["format"]: r for r in layer["results"]}
        fp32 = results.get("fp32")
        cells = []
        for name in formats:
            r = results.get(name)
            if r is None:
                cells.append(None)
                continue
            cells.append(
                {
                    "error": _error(r["error"]),
                    "speedup": "-" if r["speedup"] is None else f"{r['speedup']:.2f}×",
                    "safe": r["safe"],
                    "fast": r["fast"],
                    "kind": "chosen" if name == layer["choice"] else "safe" if r["safe"] else "unsafe",
                    "title": f"{name}: {r['kernel']}"
                    + ("" if r["time_s"] is None else f", {r['time_s'] * 1e6:.1f} µs per call"),
                }
            )
        rows.append(
            {
                "name": layer["name"],
                "shape": f"{layer['in_features']} → {layer['out_features']}",
                "rows_seen": layer["rows_seen"],
                "fp32_us": "-" if fp32 is None or fp32["time_s"] is None else f"{fp32['time_s'] * 1e6:.1f}",
                "cells": cells,
                "choice": layer["choice"] or "fp32",
            }
        )
    chosen: dict[str, int] = {}
    for layer in ran:
        chosen[layer["choice"] or "fp32"] = chosen.get(layer["choice"] or "fp32", 0) + 1
    return {
        "formats": formats,
        "rows": rows,
        "left_out": len(ran) - len(shown),
        "never_ran": [layer["name"] for layer in probe["layers"] if not layer["results"]],
        "chosen": chosen,
    }
