"""Which of the FM's daily snapshots a run keeps (`train.snapshots`), and the check that publishing finds
the ones it needs.

Training writes one snapshot per trained day (`models/<fm>/snapshots/day=*.pt`): `fxrec publish` gives
day t's events the snapshot of day t-1-delay. Once every configured delay is published
(`published_delays`), `prune_snapshots` removes those the policy does not keep; nothing else reads
them (resuming training reads checkpoint.pt, serving reads model.pt). A later publish that needs a
removed one stops in `check_snapshots`, before it writes anything.
"""

from __future__ import annotations

from fxrec.config import RunConfig, TrainConfig
from fxrec.errors import InputError
from fxrec.run import Run


def published_delays(config: RunConfig) -> list[int]:
    """The delays the run publishes: `publish.delays`, and 0 plus `experiment.delays` with an experiment."""
    delays = set(config.publish.delays)
    if config.experiment is not None:
        delays |= {0, *config.experiment.delays}
    return sorted(delays)


def needed_days(log_days: list[str], delay: int) -> list[str]:
    """The snapshot days a publish at `delay` reads: day t's events get the snapshot of day t-1-delay."""
    return log_days[: max(len(log_days) - 1 - delay, 0)]


def kept_days(snapshot_days: list[str], log_days: list[str], train: TrainConfig) -> list[str]:
    """The snapshots that `train.snapshots` keeps once the run is published, oldest first.

    every_k_days keeps the last day of each block of `snapshot_every_days` days of the log (its days
    k, 2k, ...: the same ones however many days the log grows by), plus the newest snapshot."""
    if train.snapshots in ("all", "none") or not snapshot_days:
        return list(snapshot_days)
    kept = {snapshot_days[-1]}
    if train.snapshots == "every_k_days":
        position = {day: i for i, day in enumerate(log_days)}
        k = train.snapshot_every_days
        kept |= {d for d in snapshot_days if d in position and (position[d] + 1) % k == 0}
    return sorted(kept)


def publishes(config: RunConfig) -> bool:
    """Whether the run publishes its FM: the config has a transfer experiment, a VM with channels, or
    says how to publish (a `publish:` section of its own)."""
    vms = [*config.vms, *([config.vm_template] if config.vm_template is not None else [])]
    return config.experiment is not None or "publish" in config.model_fields_set or any(vm.channels for vm in vms)


def prune_snapshots(run: Run, log_days: list[str]) -> list[str]:
    """Remove the FM snapshots the policy does not keep: once every delay of the run is published, or
    at once when nothing in the config reads the published FM (a later `fxrec publish` then stops in
    `check_snapshots`). Returns the days removed (none while a delay is still to publish)."""
    from fxrec.transfer.published import PUBLISH_META

    config = run.config
    fm = config.fm.name
    delays = published_delays(config) if publishes(config) else []
    if not all((run.publish_dir(fm, delay) / PUBLISH_META).exists() for delay in delays):
        return []
    model = run.model(fm)
    days = model.snapshot_days()
    kept = set(kept_days(days, log_days, config.train))
    removed = [day for day in days if day not in kept]
    for day in removed:
        model.snapshot(day).unlink()
    return removed


def check_snapshots(run: Run, log_days: list[str], delay: int) -> None:
    """InputError (one line) when a publish at `delay` would miss one of the FM snapshots it reads."""
    config = run.config
    model = run.model(config.fm.name)
    missing = sorted(set(needed_days(log_days, delay)) - set(model.snapshot_days()))
    if not missing:
        return
    days = ", ".join(missing) if len(missing) <= 3 else f"{missing[0]} .. {missing[-1]} ({len(missing)} days)"
    where = f"publishing FM {config.fm.name!r} at delay {delay} needs its snapshots of {days}, not in {model.snapshots}"
    if not model.trained():
        raise InputError(f"{where}: the FM is not trained; run `fxrec train fm` first")
    if not model.snapshot_days():
        raise InputError(
            f"{where}: the FM was trained without snapshots (`train: {{snapshots: none}}`); "
            "set `train: {snapshots: keep_last}` and retrain it (`fxrec train fm --fresh`)"
        )
    raise InputError(
        f"{where}: they were pruned once every configured delay was published (`train.snapshots` keeps only "
        "some); `train: {snapshots: all}` keeps every one: set it and retrain the FM (`fxrec train fm --fresh`)"
    )
