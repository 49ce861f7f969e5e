"""`fxrec publish --engine ray`: the FM's inference over the log on Ray Data, the files of the embedded publish.

The FM runs once per event and every event's output depends only on its own features: the part of a
publish that grows with the log is embarrassingly parallel. On Ray:

1. read (driver): the log is walked once, day after day as the embedded publish walks it (each day's
   histories come from the days before), and cut into chunks of `CHUNK` events: the very batches the
   embedded publish gives the FM. Each chunk, tagged with the snapshot it needs, becomes one block of
   a Ray Dataset (histories travel as list columns). A snapshot's own training day goes in once more,
   under that snapshot, where the LoopFM autoencoder is fitted on it.
2. infer (Ray): `map_batches` sends the blocks to a pool of FM actors (`ActorPoolStrategy`); an actor
   builds the FM once, loads each snapshot once, and returns its chunks' FM outputs. The results come
   back in log order (`preserve_order`).
3. write (driver): what is sequential and cheap, by the embedded publish's own `DayWriter`: the
   autoencoder, the LoopFM codes, the day files, the user store and publish.yaml.

Same chunks, same model code, seed and thread count, same writer: the Parquet files are byte for byte
those of `fxrec publish` without Ray. The run folder must be reachable from every Ray node (the
actors read the FM snapshots from it), as the log is.

Locally Ray starts with one CPU per actor and no dashboard, and stops when the publish ends;
`--address` joins a running cluster (`ray start --head` prints it; `auto` finds a local one).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.progress import Progress

from fxrec.cluster import import_ray, ray_session
from fxrec.config import RunConfig
from fxrec.data.batches import EventFrame
from fxrec.data.reader import iter_tables
from fxrec.errors import InputError
from fxrec.jobs import load_run_config, print_disk_usage
from fxrec.jobs.publish import CHUNK, DayWriter, _Hooks, _run_fm, build_publish_model
from fxrec.jobs.snapshots import check_snapshots, prune_snapshots
from fxrec.run import Run
from fxrec.transfer.published import PUBLISH_META

ENGINES = ("embedded", "ray")
CHUNK_ID = "__chunk"  # which chunk of the plan a row belongs to
SNAPSHOT = "__snapshot"  # the snapshot day that runs it
HISTORY = "__history."  # prefix of the list columns that carry the histories
META = ("event_id", "user_id", "item_id", "ts")


def publish_delays_ray(
    run: Path,
    config: Path | None = None,
    delays: list[int] | None = None,
    fresh: bool = False,
    console: Console | None = None,
    engine: str = "ray",
    address: str | None = None,
    actors: int = 2,
    progress: bool = True,
) -> list[Path]:
    """`fxrec publish --engine ray`: `publish_delays` with the FM on Ray; one Ray session for every delay.

    Bad input (an unknown engine, a run that cannot be published, a cluster that cannot be joined) is an
    InputError before anything is written."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine != "ray":
        raise InputError("--address joins a Ray cluster: it needs --engine ray")
    run_config = load_run_config(config or Run(run).config_path)
    console = console or Console()
    todo = list(delays or run_config.publish.delays)
    run_dir = Run(run, run_config)
    log = run_dir.event_log()
    for delay in todo:  # every check before Ray starts
        if fresh or not (run_dir.publish_dir(run_config.fm.name, delay) / PUBLISH_META).exists():
            check_snapshots(run_dir, log.days, delay)
    outs = []
    with ray_session(address, actors, purpose="`fxrec publish --engine ray`"):
        for delay in todo:
            outs.append(
                publish_ray(run, run_config, delay=delay, fresh=fresh, actors=actors, progress=progress)
            )
            console.print(f"published {run_config.fm.name} (delay {delay}) on Ray -> {outs[-1]}")
    print_disk_usage(run, console)
    return outs


def publish_ray(
    run: Path, config: RunConfig, delay: int = 0, fresh: bool = False, actors: int = 2, progress: bool = True
) -> Path:
    """`fxrec.jobs.publish.publish` with the FM on Ray (an initialised Ray: see `ray_session`)."""
    ray = _import_ray()
    run_dir = Run(run, config)
    out = run_dir.publish_dir(config.fm.name, delay)
    log = run_dir.event_log()
    if (out / PUBLISH_META).exists() and not fresh:
        prune_snapshots(run_dir, log.days)
        return out
    check_snapshots(run_dir, log.days, delay)  # before anything is written
    model = build_publish_model(config, log.spec)  # checks the config; gives tasks, features, the user tower
    features = [log.spec.feature(n) for n in model.features]
    fm_dir = run_dir.model(config.fm.name)
    snapshots = {day: str(fm_dir.snapshot(day)) for day in log.days[: max(len(log.days) - 1 - delay, 0)]}

    writer = DayWriter(out, config, model, delay)
    name = f"{config.fm.name} (delay {delay})"
    try:
        with Progress(disable=not progress) as bar:
            plan = _plan(log, features, delay, config.publish.refit_autoencoder, bar, name)
            if plan.groups:
                context = ray.data.DataContext.get_current()
                context.execution_options.preserve_order = True
                context.enable_progress_bars = False  # fxrec's own bars, one per stage
                context.print_on_execution_start = False
                logging.getLogger("ray.data").setLevel(logging.WARNING)
                logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"
                blocks = ray.data.from_arrow_refs(plan.blocks)
                outputs = blocks.map_batches(
                    _FMActor,
                    fn_constructor_kwargs={"config": config, "spec": log.spec, "snapshots": snapshots},
                    batch_size=None,  # one block, one chunk: the embedded publish's batches
                    batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    num_cpus=1,
                )
                infer = bar.add_task(f"infer {name} on {actors} Ray actors", total=len(plan.blocks))
                write = bar.add_task(f"write {name}", total=sum(not g.fit for g in plan.groups))
                for group in _groups(
                    plan, outputs.iter_batches(batch_size=None, batch_format="pyarrow"), bar, infer
                ):
                    if group.fit:
                        writer.fit(group.outputs["representation"])
                    else:
                        writer.write(
                            group.day, group.snapshot, {k: group.outputs[k] for k in META}, group.outputs
                        )
                        bar.advance(write)
    except BaseException:
        writer.abandon()
        raise
    writer.finish()
    prune_snapshots(run_dir, log.days)
    return out


@dataclass
class _Group:
    """The chunks of one day run under one snapshot: a day to write, or a training day to fit on."""

    day: str
    snapshot: str
    fit: bool
    chunks: int
    pieces: list[pa.Table] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Plan:
    groups: list[_Group] = field(default_factory=list)
    blocks: list = field(default_factory=list)  # ObjectRefs of the chunk tables, in order
    group_of: list[int] = field(default_factory=list)  # per chunk id


def _plan(log, features, delay: int, refit: bool, bar: Progress, name: str) -> _Plan:
    """Stage 1: the embedded publish's walk over the log, with each FM call put into Ray as a chunk:
    a new snapshot's training day first where the autoencoder fits on it (the first one, or every
    one with `refit`), then the day's events."""
    plan = _Plan()
    read = bar.add_task(f"read {name}", total=len(log.days))
    recent: deque[tuple[str, pa.Table]] = deque(maxlen=delay + 2)
    loaded: str | None = None
    fitted = False
    for index, (day, table, history) in enumerate(iter_tables(log, features)):
        events = _with_history(table, history)
        recent.append((day, events))
        bar.advance(read)
        source = index - 1 - delay
        if source < 0:
            continue
        snapshot = log.days[source]
        if snapshot != loaded:
            loaded = snapshot
            if refit or not fitted:
                training_day = next(t for d, t in recent if d == snapshot)
                _add_group(plan, _Group(snapshot, snapshot, True, 0), training_day)
                fitted = True
        _add_group(plan, _Group(day, snapshot, False, 0), events)
    bar.update(read, completed=len(log.days))
    return plan


def _add_group(plan: _Plan, group: _Group, events: pa.Table) -> None:
    import ray

    plan.groups.append(group)
    for start in range(0, events.num_rows, CHUNK):
        chunk = events.slice(start, min(CHUNK, events.num_rows - start))
        chunk = chunk.append_column(CHUNK_ID, pa.array(np.full(chunk.num_rows, len(plan.blocks), np.int64)))
        chunk = chunk.append_column(SNAPSHOT, pa.array([group.snapshot] * chunk.num_rows))
        plan.blocks.append(ray.put(chunk.combine_chunks()))
        plan.group_of.append(len(plan.groups) - 1)
        group.chunks += 1


def _groups(plan: _Plan, batches, bar: Progress, infer) -> Iterator[_Group]:
    """The groups of the plan, in order, each once all its chunks' outputs are in."""
    done = 0
    for batch in batches:
        for piece in _split(batch):
            chunk = int(piece.column(CHUNK_ID)[0].as_py())
            group = plan.groups[plan.group_of[chunk]]
            group.pieces.append(piece)
            bar.advance(infer)
            if len(group.pieces) == group.chunks:
                if plan.group_of[chunk] != done:
                    raise RuntimeError(f"Ray returned chunk {chunk} out of order")
                group.outputs = _outputs(pa.concat_tables(group.pieces))
                group.pieces = []
                done += 1
                yield group
    if done != len(plan.groups):
        raise RuntimeError(f"Ray returned {done} of {len(plan.groups)} groups of chunks")


def _split(table: pa.Table) -> Iterator[pa.Table]:
    """A batch cut where its chunk id changes (one chunk each)."""
    ids = table.column(CHUNK_ID).to_numpy()
    cuts = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1, len(ids)]
    for start, end in zip(cuts[:-1], cuts[1:], strict=True):
        if end > start:
            yield table.slice(start, end - start)


def _with_history(table: pa.Table, history: dict[str, tuple[np.ndarray, np.ndarray]] | None) -> pa.Table:
    """The day's events with each history (offsets, values) as a list column."""
    for key, (offsets, values) in (history or {}).items():
        column = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(values))
        table = table.append_column(HISTORY + key, column)
    return table


def _frame(chunk: pa.Table, spec, features) -> EventFrame:
    """A chunk's EventFrame, histories taken back out of their list columns."""
    history = {}
    for name in chunk.column_names:
        if name.startswith(HISTORY):
            array = chunk.column(name).combine_chunks()
            offsets = array.offsets.to_numpy().astype(np.int64)
            history[name.removeprefix(HISTORY)] = (
                offsets - offsets[0],
                array.flatten().to_numpy(zero_copy_only=False),
            )
    events = chunk.select([n for n in chunk.column_names if not n.startswith(HISTORY)])
    return EventFrame(events, spec, features, history or None)


def _fixed(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _outputs(table: pa.Table) -> dict[str, np.ndarray]:
    """An actor output table as the embedded publish's arrays: per-event columns, (n, d) vectors."""
    out = {}
    for name in table.column_names:
        array = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(array.type):
            out[name] = array.flatten().to_numpy().reshape(-1, array.type.list_size).copy()
        else:
            out[name] = array.to_numpy().copy()  # writable, as torch.from_numpy wants
    return out


class _FMActor:
    """A Ray Data actor: the FM built once, each snapshot loaded once, chunks of events -> FM outputs."""

    def __init__(self, config: RunConfig, spec, snapshots: dict[str, str]):
        from fxrec.models.checkpoint import load

        self.load = load
        self.model = build_publish_model(config, spec)
        self.hooks = _Hooks(self.model, config.publish.loopfm_layers)
        self.spec = spec
        self.features = [spec.feature(n) for n in self.model.features]
        self.snapshots = snapshots
        self.loaded: str | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.concat_tables([self._chunk(chunk) for chunk in _split(batch)])

    def _chunk(self, chunk: pa.Table) -> pa.Table:
        snapshot = chunk.column(SNAPSHOT)[0].as_py()
        if snapshot != self.loaded:
            self.model.load_state_dict(self.load(self.snapshots[snapshot]))
            self.loaded = snapshot
        frame = _frame(chunk.drop_columns([CHUNK_ID, SNAPSHOT]), self.spec, self.features)
        outputs = _run_fm(self.model, self.hooks, frame)
        columns: dict[str, pa.Array] = {CHUNK_ID: chunk.column(CHUNK_ID).combine_chunks()}
        columns.update({name: frame.meta[name].numpy() for name in META})
        for name, values in outputs.items():
            columns[name] = _fixed(values) if values.ndim == 2 else values
        return pa.table(columns)


def _import_ray():
    return import_ray("`fxrec publish --engine ray`", data=True)
