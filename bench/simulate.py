"""Simulator speed: events per second for the ads world, against writing the same log to Parquet.

The demo's default size (~1M impressions over two weeks) should simulate in well under a minute.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import parse_args, print_table, write_result

from fxrec.data.eventlog import write_events
from fxrec.data.simulator import SimulatorConfig, dataset_spec, simulate


def main() -> None:
    args = parse_args("simulate", __doc__)
    sizes = [(3, 50_000)] if args.quick else [(14, 72_000), (14, 200_000)]
    rows = []
    for days, per_day in sizes:
        config = SimulatorConfig(days=days, impressions_per_day=per_day)
        started = time.perf_counter()
        table = simulate(config, progress=False)
        simulate_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            write_events(table, dataset_spec(config), Path(folder) / "events")
            write_s = time.perf_counter() - started
        rows.append({
            "days": days,
            "impressions_per_day": per_day,
            "events": table.num_rows,
            "simulate_s": simulate_s,
            "events_per_s": table.num_rows / simulate_s,
            "write_parquet_s": write_s,
            "simulate_over_write": simulate_s / write_s,
        })
    print_table("ads-world simulator", rows)
    demo = next((r for r in rows if r["days"] == 14 and r["impressions_per_day"] == 72_000), rows[0])
    write_result(args, "simulate", rows, {"simulate_seconds_at_demo_size": demo["simulate_s"], "simulate_over_write": demo["simulate_over_write"]})


if __name__ == "__main__":
    main()
