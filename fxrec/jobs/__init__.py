"""What each `fxrec` command does, one module per job, on a run directory (`fxrec.run.Run`):

    data        simulate, import or profile an event log
    train       the run's log, then the FM and the VMs (progressive training)
    evaluate    NE, AUC, GAUC, calibration of the trained models -> report.json, report.html
    probe       the low-precision probe (fxrec.lowp) of a trained model, the FM's into the report
    publish     the FM's outputs over the log, as it would have served them online
    experiment  every VM x channel set x seed: how much of the FM's gain each VM captures
    demo        simulate -> train -> evaluate -> report -> serve a few requests
    serve       the scoring server and the refresh worker
    loadtest    three server configurations side by side on replayed requests
    replay      SOLARIS coverage offline, on the log

Jobs sit on top of fxrec: the CLI calls them, and no module of fxrec's other packages imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from fxrec.config import RunConfig


def load_run_config(path: Path | str, events: Path | str | None = None) -> RunConfig:
    """A run config (InputError on a missing file, bad YAML or a bad key); `events` overrides its log."""
    from fxrec.config import load_config

    config = load_config(path)
    return config if events is None else config.model_copy(update={"events": str(events)})


def print_disk_usage(run: Path | str, console: Console | None = None) -> None:
    """The end of a job that filled a run folder: its size and its biggest parts, on one line."""
    from rich.console import Console

    from fxrec.run import Run

    (console or Console()).print(str(Run(run).disk_usage()), highlight=False)
