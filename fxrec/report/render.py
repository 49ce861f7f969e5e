"""Write report.json and a self-contained report.html (plots embedded as PNG)."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TEMPLATES = Path(__file__).parent / "templates"


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def ne_per_day_plot(daily: dict[str, list[dict]]) -> str:
    figure, axis = plt.subplots(figsize=(8, 4))
    for name, rows in daily.items():
        axis.plot([r["day"][5:] for r in rows], [r["ne"] for r in rows], marker="o", label=name, linewidth=2 if name == "fm" else 1)
    axis.set_xlabel("evaluation day (trained on all earlier days)")
    axis.set_ylabel("NE (lower is better)")
    axis.set_title("Progressive evaluation: NE per day")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.autofmt_xdate()
    return _png(figure)


def fm_vs_vm_plot(comparisons: list[dict]) -> str:
    figure, axis = plt.subplots(figsize=(6, 3.5))
    names = [c["vm"] for c in comparisons]
    x = range(len(names))
    axis.bar([i - 0.2 for i in x], [c["vm_ne"] for c in comparisons], width=0.4, label="VM")
    axis.bar([i + 0.2 for i in x], [c["fm_ne"] for c in comparisons], width=0.4, label="FM on the same events")
    if all(c.get("oracle_ne") for c in comparisons):
        axis.scatter(list(x), [c["oracle_ne"] for c in comparisons], color="black", marker="_", s=400, label="oracle", zorder=3)
    axis.set_xticks(list(x), names)
    low = min(min(c["fm_ne"], c["vm_ne"], c.get("oracle_ne") or 1) for c in comparisons)
    axis.set_ylim(max(0.0, low - 0.05), None)
    axis.set_ylabel("NE")
    axis.set_title("FM vs each VM on the VM's evaluation events")
    axis.legend(fontsize=8)
    return _png(figure)


def transfer_ratio_plot(rows: list[dict]) -> str | None:
    """Bars: test-day transfer ratio per channel set (delay 0), one group per VM, 95% seed-bootstrap
    intervals, the set chosen on validation days outlined. None when no ratio is defined (the report
    then says why instead of showing empty axes)."""
    rows = [r for r in rows if r["delay"] == 0 and r["channel_set"] != "none" and r["transfer_ratio"] is not None]
    if not rows:
        return None
    sets = list(dict.fromkeys(r["channel_set"] for r in rows))
    vms = list(dict.fromkeys(r["vm"] for r in rows))
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(sets) * max(1, len(vms)) / 1.5), 3.8))
    width = 0.8 / max(1, len(vms))
    selected = []
    for j, vm in enumerate(vms):
        by_set = {r["channel_set"]: r for r in rows if r["vm"] == vm}
        present = [i for i, s in enumerate(sets) if s in by_set]
        shown = [by_set[sets[i]] for i in present]
        xs = [i + (j - (len(vms) - 1) / 2) * width for i in present]
        bars = axis.bar(xs, [r["transfer_ratio"] for r in shown], width=width, label=vm)
        spread = [(x, r) for x, r in zip(xs, shown, strict=True) if r["transfer_ratio_low"] is not None]
        if spread:  # intervals only where the seed bootstrap gave one
            axis.errorbar(
                [x for x, _ in spread], [r["transfer_ratio"] for _, r in spread], capsize=2, fmt="none", color="black",
                yerr=[[r["transfer_ratio"] - r["transfer_ratio_low"] for _, r in spread], [r["transfer_ratio_high"] - r["transfer_ratio"] for _, r in spread]],
            )
        selected += [bar for bar, row in zip(bars, shown, strict=True) if row.get("selected")]
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(sets)), sets, rotation=30, ha="right")
    axis.set_ylabel("transfer ratio (test days)")
    axis.set_title("Share of the FM's NE gain each channel set captures (outlined: chosen on validation days)")
    axis.legend(fontsize=8)
    for bar in selected:  # after the legend, whose swatches copy the first bar of each VM
        bar.set_edgecolor("black")
        bar.set_linewidth(2)
    return _png(figure)


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def write_report(content: dict, run_dir: Path, title: str) -> tuple[Path, Path]:
    content = _clean(content)
    json_path = run_dir / "report.json"
    json_path.write_text(json.dumps(content, indent=2))
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    plots = {"ne_per_day": ne_per_day_plot(content["daily"])}
    if content["comparisons"]:
        plots["fm_vs_vm"] = fm_vs_vm_plot(content["comparisons"])
    if content.get("transfer"):
        ratio_plot = transfer_ratio_plot(content["transfer"]["rows"])
        if ratio_plot is not None:
            plots["transfer_ratio"] = ratio_plot
    html = environment.get_template("report.html.j2").render(title=title, report=content, plots=plots)
    html_path = run_dir / "report.html"
    html_path.write_text(html)
    return json_path, html_path
