"""`fxrec plan`: what a sharding plan costs at 64 to 1,024 ranks, 1D against 2D, before renting them.

Prints one row per layout and world size (see `fxrec.dist.traffic.LayoutSummary`), and writes
`plan.json` (every number) and `plan.png` (a plot of the four that decide: all-to-all peers and bytes,
message size, imbalance, per-rank memory, with the 2D replica all-reduce next to them) into `--out`.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fxrec.dist.simulated import DEFAULT_TABLES, compare, parse_tables
from fxrec.dist.traffic import LayoutSummary

MiB = 1 << 20


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def table(rows: list[LayoutSummary], title: str = "") -> Table:
    """The rows as a rich table (also what bench/scaleout.py prints)."""
    out = Table(title=title or None, show_lines=False)
    for name in (
        "ranks", "layout", "peers", "all-to-all/rank/step", "message/peer", "replica all-reduce/rank/sync",
        "…/step", "imbalance", "memory/rank", "planner memory/rank", "sharding types",
    ):  # fmt: skip
        out.add_column(name, justify="left" if name in ("layout", "sharding types") else "right")
    for r in rows:
        out.add_row(
            f"{r.ranks:,}",
            r.layout if r.replicas == 1 else f"{r.layout} x{r.replicas} (K={r.sync_every})",
            f"{r.peers:,.0f}",
            _size(r.all_to_all_bytes),
            _size(r.message_bytes),
            _size(r.replica_allreduce_bytes) if r.replicas > 1 else "-",
            _size(r.replica_allreduce_per_step) if r.replicas > 1 else "-",
            f"{r.imbalance:.2f}",
            _size(r.memory_bytes),
            _size(r.planner_memory_bytes),
            ", ".join(f"{k} {v}" for k, v in sorted(r.sharding_types.items())),
        )
    return out


def plot(rows: list[LayoutSummary], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("peers per all-to-all", lambda r: r.peers, 1),
        ("all-to-all + replica all-reduce / rank / step (MiB)", None, MiB),
        ("message size per peer (KiB)", lambda r: r.message_bytes, 1 << 10),
        ("estimated imbalance (max / mean)", lambda r: r.imbalance, 1),
        ("memory per rank (GiB)", lambda r: r.memory_bytes, 1 << 30),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(21, 3.8))
    layouts = sorted({r.layout for r in rows}, key=lambda s: (s != "1D", s))
    for ax, (title, value, scale) in zip(axes, panels, strict=True):
        for layout in layouts:
            mine = [r for r in rows if r.layout == layout]
            xs = [r.ranks for r in mine]
            if value is None:
                ax.plot(xs, [r.all_to_all_bytes / scale for r in mine], "o-", label=f"{layout} all-to-all")
                if layout != "1D":
                    stacked = [(r.all_to_all_bytes + r.replica_allreduce_per_step) / scale for r in mine]
                    ax.plot(xs, stacked, "s--", label=f"{layout} + all-reduce (K={mine[0].sync_every})")
            else:
                ax.plot(xs, [value(r) / scale for r in mine], "o-", label=layout)
        ax.set_xscale("log", base=2)
        if value is None:
            ax.set_yscale("log")
        ax.set_xlabel("ranks")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plan_job(
    tables: str = DEFAULT_TABLES,
    ranks: list[int] | None = None,
    group: int = 64,
    batch_size: int = 512,
    sync_every: int = 1,
    hbm_gib: float = 80.0,
    sharding_types: list[str] | None = None,
    out: Path | None = None,
    console: Console | None = None,
) -> list[LayoutSummary]:
    specs = parse_tables(tables)
    rows = compare(specs, ranks or [64, 256, 1024], group, batch_size, sync_every, hbm_gib, sharding_types)
    if console is not None:
        total = sum(t.bytes for t in specs)
        title = f"{len(specs)} tables ({_size(total)} of fp32 weights), {batch_size} examples a rank a step"
        Console(file=console.file, width=max(console.width, 200)).print(table(rows, title))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "tables": tables,
            "batch_size": batch_size,
            "group": group,
            "sync_every": sync_every,
            "hbm_gib": hbm_gib,
        }
        (out / "plan.json").write_text(json.dumps({**meta, "rows": [r.to_dict() for r in rows]}, indent=2))
        plot(rows, out / "plan.png")
        if console is not None:
            console.print(f"plan: {out / 'plan.json'}, {out / 'plan.png'}", highlight=False)
    return rows
