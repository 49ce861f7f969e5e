"""The report's funnel section: what `fxrec funnel` measured (the run's funnel.json), as a table and a plot.

The table has one row per stage (retrieval, early-stage ranker, final-stage VM): the ads it hands on,
the share of the user's clicked ads it still holds and the share of the final stage's value it keeps
against scoring every candidate with the final stage. The plot draws recall of clicked ads against K
for retrieval's list, the ESR's ranking of what retrieval kept, and the final stage ranking every
eligible ad (the reference no real system can afford).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

STAGE_NAMES = {"retrieval": "retrieval", "esr": "early-stage ranker", "final": "final-stage VM"}
CURVE_NAMES = {
    "retrieval": "retrieval's list",
    "esr": "ESR ranking of the retrieved",
    "final_everything": "final stage on every eligible ad",
}


def recall_vs_k_figure(funnel: dict) -> Figure | None:
    """Recall of clicked ads at K of each ranked list in `funnel["recall_at_k"]`; None when it is empty."""
    curves = {name: by_k for name, by_k in (funnel.get("recall_at_k") or {}).items() if by_k}
    if not curves:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    stages = funnel.get("stages", {})
    retrieved = stages.get("retrieval", {}).get("k")
    shown: set[int] = set()
    for name, by_k in curves.items():
        ks = sorted(int(k) for k in by_k)
        if name == "esr" and retrieved:  # the ESR ranks only what retrieval kept
            ks = [k for k in ks if k <= retrieved]
        shown.update(ks)
        axis.plot(ks, [by_k[str(k)] for k in ks], marker="o", label=CURVE_NAMES.get(name, name))
    for name, style in (("retrieval", ":"), ("esr", "--")):
        k = stages.get(name, {}).get("k")
        if k:
            axis.axvline(
                k, color="grey", linestyle=style, linewidth=0.8, label=f"{STAGE_NAMES[name]} K = {k}"
            )
    axis.set_xscale("log")
    axis.set_xticks(sorted(shown), [str(k) for k in sorted(shown)])
    axis.minorticks_off()
    axis.set_xlabel("K (ads kept per request)")
    axis.set_ylabel("recall of the ads the user clicked that day")
    axis.set_ylim(0, 1.02)
    axis.set_title(f"Funnel: recall vs K over {funnel.get('requests', 0):,} requests")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure


def funnel_table(funnel: dict) -> list[dict]:
    """One row per stage for report.html: name, K, mean size, recall and value kept, as text."""

    def share(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    rows = []
    for name, stage in funnel.get("stages", {}).items():
        rows.append(
            {
                "stage": STAGE_NAMES.get(name, name),
                "k": stage.get("k", "-"),
                "size": f"{stage['mean_size']:.1f}",
                "recall": share(stage.get("recall_of_clicked")),
                "value_kept": share(stage.get("value_kept")),
                "seconds": "-" if stage.get("seconds") is None else f"{stage['seconds']:.1f}",
            }
        )
    return rows
