"""Write report.json and a self-contained report.html (plots embedded as PNG)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
from pathlib import Path

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fxrec.report.funnel import funnel_table, recall_vs_k_figure  # noqa: E402
from fxrec.report.probe_table import probe_table  # noqa: E402

TEMPLATES = Path(__file__).parent / "templates"


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def ne_over_time_figure(over_time: dict) -> Figure | None:
    """NE per period of every model (`fxrec.report.periods`), on a date axis readable at any length.
    Excluded periods are NaN, a gap in the line; None when no model has a period to draw."""
    drawn = {name: rows for name, rows in over_time["periods"].items() if any(r["excluded"] is None for r in rows)}
    if not drawn:
        return None
    figure, axis = plt.subplots(figsize=(9, 4))
    dates = set()
    for name, rows in drawn.items():
        starts = [dt.date.fromisoformat(r["start"]) for r in rows]
        values = [r["ne"] if r["excluded"] is None else math.nan for r in rows]
        axis.plot(starts, values, marker="o", markersize=3, label=name, linewidth=2 if name == "fm" else 1)
        dates.update(starts)
    # A handful of date ticks whatever the span: 3 days or 800 read the same. Periods are whole
    # days, so a tick never falls inside one (hourly ticks only every 24 hours, at midnight).
    locator = mdates.AutoDateLocator(minticks=min(3, len(dates)), maxticks=10)
    locator.intervald[mdates.HOURLY] = [24]
    if len(dates) == 1:  # one point: a day either side, not the locator's default span of years
        (only,) = dates
        axis.set_xlim(only - dt.timedelta(days=1), only + dt.timedelta(days=1))
    axis.xaxis.set_major_locator(locator)
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axis.tick_params(axis="x", labelrotation=30)
    period = over_time["period"]
    axis.set_xlabel(f"evaluation {period}{' (from its Monday)' if period == 'week' else ''}; trained on all earlier days")
    axis.set_ylabel(f"NE on {over_time['task']} (lower is better)")
    axis.set_title(f"Progressive evaluation: NE per {period}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure


def fm_vs_vm_plot(comparisons: list[dict]) -> str:
    comparisons = [c for c in comparisons if c["vm_ne"] is not None and c["fm_ne"] is not None]  # NE undefined: a constant label
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


def _facts(content: dict) -> dict:
    """What the template's sentences may name, read off the content, so no sentence names a row,
    channel set or column the report does not have."""
    transfer = content.get("transfer") or {}
    rows = transfer.get("rows", [])
    over_time = content["ne_over_time"]
    return {
        "sum_sets": list(dict.fromkeys(r["channel_set"] for r in rows if "sum" in r.get("channels", []))),
        "has_kd_test": any(r.get("p_vs_kd") is not None for r in rows),
        "has_intervals": any(r.get("transfer_ratio_low") is not None for r in rows),
        "excluded_periods": sum(r["excluded"] is not None for series in over_time["periods"].values() for r in series),
        "excluded_reasons": sorted({r["excluded"] for series in over_time["periods"].values() for r in series if r["excluded"]}),
    }


def write_report(content: dict, json_path: Path, html_path: Path, title: str) -> tuple[Path, Path]:
    """The report as JSON at `json_path` and as HTML at `html_path` (a run's: `Run.report_json`, `.report_html`)."""
    content = _clean(content)
    json_path.write_text(json.dumps(content, indent=2))
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    plots = {}
    over_time = ne_over_time_figure(content["ne_over_time"])
    if over_time is not None:
        plots["ne_over_time"] = _png(over_time)
    if content["comparisons"]:
        plots["fm_vs_vm"] = fm_vs_vm_plot(content["comparisons"])
    if content.get("transfer"):
        ratio_plot = transfer_ratio_plot(content["transfer"]["rows"])
        if ratio_plot is not None:
            plots["transfer_ratio"] = ratio_plot
    probe = probe_table(content["probe"]) if content.get("probe") else None
    funnel_rows = funnel_table(content["funnel"]) if content.get("funnel") else []
    if content.get("funnel"):
        recall = recall_vs_k_figure(content["funnel"])
        if recall is not None:
            plots["funnel_recall"] = _png(recall)
    html = environment.get_template("report.html.j2").render(
        title=title, report=content, plots=plots, facts=_facts(content), probe=probe, funnel_rows=funnel_rows
    )
    html_path.write_text(html)
    return json_path, html_path
