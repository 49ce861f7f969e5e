"""`fxrec data`: event logs simulated from a config, imported from a dataset, or profiled."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from fxrec.config import RunConfig
from fxrec.data.eventlog import EventLog, EventLogError
from fxrec.data.profile import LogProfile, profile_log
from fxrec.data.simulator import simulate_to
from fxrec.data.sources import import_movielens_100k, import_open_bandit, import_table
from fxrec.errors import InputError

__all__ = [
    "EventLogError",
    "import_movielens_100k",
    "import_open_bandit",
    "import_table",
    "open_log",
    "print_profile",
    "simulate",
]


def simulate(config: RunConfig, out: Path, where: Path | str | None = None) -> EventLog:
    """The ads world of the config's `simulator:` section, as an event log at `out`."""
    if config.simulator is None:
        raise InputError(f"{where}: no `simulator:` section to simulate")
    simulate_to(config.simulator, out)
    return EventLog(out)


def open_log(path: Path) -> EventLog:
    """The event log at `path` (EventLogError when it is not one)."""
    return EventLog(path)


def print_profile(log: EventLog, console: Console) -> LogProfile:
    """Events, users, items, days, label rates per day, cardinality and nulls per column, and warnings."""
    result = profile_log(log)
    console.print(
        f"[bold]{result.path}[/]: {result.events:,} events, {result.users:,} users, {result.items:,} items, "
        f"{len(result.days)} days ({result.days[0].day} .. {result.days[-1].day})"
    )
    days = Table("day", "events", *[f"{label} rate" for label in result.labels], title="per day")
    shown = result.days if len(result.days) <= 14 else result.days[:7] + result.days[-7:]
    for day in shown:
        if len(result.days) > 14 and day is result.days[-7]:
            days.add_row("...", "", *["" for _ in result.labels])
        days.add_row(day.day, f"{day.events:,}", *[f"{day.label_rates[t]:.4f}" for t in result.labels])
    console.print(days)
    columns = Table("column", "cardinality", "null share", "ids seen once", title="columns")
    for column in result.columns:
        once = "" if column.one_off_share is None else f"{column.one_off_share:.1%}"
        columns.add_row(column.name, f"{column.cardinality:,}", f"{column.null_share:.1%}", once)
    console.print(columns)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    return result
