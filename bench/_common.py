"""The convention every fxrec benchmark follows.

`python bench/<name>.py [--quick] [--out FILE]` measures side by side in one run, prints a table,
and writes JSON with the raw measurements and the ratios (default: bench/results/<name>.json).
Absolute times on these shared machines are context only; the ratios are the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def simulated_log(config: Any, name: str) -> Path:
    """The simulator's log for `config` (a SimulatorConfig), cached under .cache/data by a hash of the
    config and of the simulator's source, so a changed config or simulator simulates afresh instead of
    reading a stale log."""
    from fxrec.data import simulator
    from fxrec.data.simulator import simulate_to

    key = json.dumps(config.model_dump(), sort_keys=True) + Path(simulator.__file__).read_text()
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    path = ROOT / ".cache" / "data" / f"simulated-{name}-{digest}"
    if not path.exists():
        simulate_to(config, path, progress=False)
    return path


def parse_args(
    name: str, description: str, extra: list[tuple[tuple, dict]] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"bench/{name}.py", description=description)
    parser.add_argument("--quick", action="store_true", help="a small run that finishes in under a minute")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / f"{name}.json", help="JSON output file"
    )
    for args, kwargs in extra or []:
        parser.add_argument(*args, **kwargs)
    return parser.parse_args()


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title)
    for column in columns:
        table.add_column(
            column, justify="right" if rows and isinstance(rows[0].get(column), (int, float)) else "left"
        )
    for row in rows:
        table.add_row(*[_fmt(row.get(c)) for c in columns])
    Console(width=200).print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def write_result(
    args: argparse.Namespace, name: str, rows: list[dict[str, Any]], ratios: dict[str, Any], **extra: Any
) -> dict:
    result = {
        "benchmark": name,
        "quick": bool(args.quick),
        "machine": machine(),
        "rows": rows,
        "ratios": ratios,
        **extra,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")
    return result
