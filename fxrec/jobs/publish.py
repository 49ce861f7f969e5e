"""`fxrec publish`: FM knowledge over the log, as it would have been produced online.

Events of day t get outputs from the FM snapshot trained through day t-1-delay only (`delay` > 0
simulates a stale FM). The FM runs once per event, whatever the number of VMs that consume it (ExFM's
data augmentation system), and writes per day `publish/<fm>[_delay<k>]/day=<t>.parquet` (`Run.publish_dir`):

    event_id, user_id, ts, fm_version      the snapshot used (int yyyymmdd of its last training day)
    logit_<task>                            FM logits (KD / ExFM targets)
    user   (d_u floats)                     SUM user embedding, if the FM has a user tower
    tae    (d floats)                       target-aware embedding, if the FM has target attention
    loopfm (c int4 codes, stored as int8)   compressed hooked-layer outputs (LoopFM)

plus `publish.yaml` (widths, tasks, versions) and, for serving, the latest user embeddings in the
embedding store (`store/`, namespace "user"). The LoopFM autoencoder is fitted on the first snapshot's
own training day (events before any it encodes) and then kept fixed, so codes from different days stay
comparable in one history (`refit_autoencoder: true` refits it on each new snapshot's training day).

Day files are compact Parquet (`fxrec.data.compact_parquet`). Once every configured delay is published,
the FM snapshots that `train.snapshots` does not keep are removed (`fxrec.jobs.snapshots`); a later
publish that needs one of them fails before it writes anything.
"""

from __future__ import annotations

import shutil
from collections import deque
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import yaml
from rich.console import Console
from rich.progress import Progress

from fxrec.config import ModelConfig, RunConfig
from fxrec.data.batches import EventFrame
from fxrec.data.compact_parquet import write_compact
from fxrec.data.reader import iter_frames
from fxrec.factory import build_model
from fxrec.jobs import load_run_config, print_disk_usage
from fxrec.jobs.snapshots import check_snapshots, prune_snapshots
from fxrec.models.checkpoint import load
from fxrec.models.ranking import RankingModel
from fxrec.run import USER_STORE, Run
from fxrec.store.lmdb_store import compact
from fxrec.transfer.loopfm import MatryoshkaAutoencoder, quantize_int4
from fxrec.transfer.published import PUBLISH_META, last_row_per_user

CHUNK = 4096


def version_of(day: str) -> int:
    """FM version id of a snapshot: its last training day as yyyymmdd."""
    return int(day.replace("-", ""))


class _Hooks:
    """Forward hooks on named FM submodules; `take()` returns their concatenated outputs (B, D)."""

    def __init__(self, model: RankingModel, layers: list[str]):
        self.outputs: dict[str, torch.Tensor] = {}
        self.layers = layers
        for name in layers:
            if name == "top":
                continue
            module = model.get_submodule(name)
            module.register_forward_hook(lambda _m, _i, out, name=name: self.outputs.__setitem__(name, out))

    def take(self, representations: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [representations["top"] if n == "top" else self.outputs[n] for n in self.layers]
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)


@torch.no_grad()
def _run_fm(model: RankingModel, hooks: _Hooks, frame: EventFrame) -> dict[str, np.ndarray]:
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in frame.batches(CHUNK):
        output = model(batch)
        parts = {f"logit_{t}": output.logits[t] for t in model.tasks}
        parts.update({k: v for k, v in output.representations.items() if k in ("user", "tae")})
        parts["representation"] = hooks.take(output.representations)
        for name, value in parts.items():
            chunks.setdefault(name, []).append(value.float().numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}


def _fixed_size(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


class DayWriter:
    """Everything a publish writes around the FM's outputs, whichever engine ran the FM (the embedded
    loop below, or Ray actors: `fxrec.jobs.publish_ray`): the LoopFM autoencoder (fitted on the
    representations of a snapshot's training day, then encoding each day), the day files, the user
    store and publish.yaml -- into a hidden folder that `finish` moves into place, so a publish that
    stops half way leaves nothing behind."""

    def __init__(self, out: Path, config: RunConfig, model: RankingModel, delay: int):
        self.out = out
        self.tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.settings = config.publish
        self.seed = config.train.seed
        self.tasks = list(model.tasks)
        self.meta = {"fm": config.fm.name, "delay": delay, "tasks": self.tasks}
        self.store = _open_user_store(self.tmp, model) if self.settings.store and model.user_tower is not None else None
        self.autoencoder: MatryoshkaAutoencoder | None = None
        self.dims: dict[str, int] = {}
        self.versions: dict[str, int] = {}

    def needs_fit(self) -> bool:
        """Whether a new snapshot's training day must fit the autoencoder (first snapshot, or refit)."""
        return self.autoencoder is None or self.settings.refit_autoencoder

    def fit(self, representation: np.ndarray) -> None:
        reps = torch.from_numpy(representation)
        self.autoencoder = self.autoencoder or MatryoshkaAutoencoder(reps.shape[1], self.settings.code_dim)
        self.autoencoder.fit(reps, epochs=self.settings.autoencoder_epochs, seed=self.seed)

    def write(self, day: str, version_day: str, meta: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Day `day`'s file from its events' `meta` columns and the FM outputs of snapshot `version_day`."""
        version = version_of(version_day)
        rows = len(meta["event_id"])
        columns = {name: meta[name] for name in ("event_id", "user_id", "item_id", "ts")}
        columns["fm_version"] = np.full(rows, version, dtype=np.int64)
        columns.update({f"logit_{t}": outputs[f"logit_{t}"] for t in self.tasks})
        for name in ("user", "tae"):
            if name in outputs:
                columns[name] = _fixed_size(outputs[name])
                self.dims[name] = outputs[name].shape[1]
        assert self.autoencoder is not None
        with torch.no_grad():
            codes = quantize_int4(self.autoencoder.encode(torch.from_numpy(outputs["representation"]))).numpy()
        columns["loopfm"] = _fixed_size(codes)
        self.dims["loopfm"] = codes.shape[1]
        write_compact(pa.table(columns), self.tmp / f"day={day}.parquet")
        self.versions[day] = version
        if self.store is not None:
            _write_latest(self.store, columns, outputs["user"], version)

    def finish(self) -> Path:
        """Close the store, write publish.yaml and move the publish into place; returns its directory."""
        if self.store is not None:
            self.store.close()
            compact(self.tmp / USER_STORE)  # written day by day, read only from now on: drop the replaced pages
        meta = {**self.meta, "dims": self.dims, "versions": self.versions}
        (self.tmp / PUBLISH_META).write_text(yaml.safe_dump(meta, sort_keys=False))
        shutil.rmtree(self.out, ignore_errors=True)
        self.tmp.replace(self.out)
        return self.out

    def abandon(self) -> None:
        """Drop what was written so far (the publish failed): an earlier publish stays as it was."""
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def publish(
    run: Path, config: RunConfig | None = None, fm_name: str | None = None, delay: int = 0, fresh: bool = False, progress: bool = True
) -> Path:
    """Publish the FM of `run` with `delay` extra days of staleness; returns the publish directory."""
    run_dir = Run(run, config)
    config = run_dir.config
    fm_config: ModelConfig = config.fm
    if fm_name is not None and fm_name != fm_config.name:
        raise ValueError(f"the run's FM is {fm_config.name!r}, not {fm_name!r}")
    out = run_dir.publish_dir(fm_config.name, delay)
    log = run_dir.event_log()
    if (out / PUBLISH_META).exists() and not fresh:
        prune_snapshots(run_dir, log.days)
        return out
    check_snapshots(run_dir, log.days, delay)  # before anything is written
    fm_dir = run_dir.model(fm_config.name)
    settings = config.publish
    model = build_publish_model(config, log.spec)
    hooks = _Hooks(model, settings.loopfm_layers)
    features = [log.spec.feature(n) for n in model.features]

    writer = DayWriter(out, config, model, delay)
    loaded: str | None = None
    recent: deque[tuple[str, EventFrame]] = deque(maxlen=delay + 2)
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"publish {fm_config.name} (delay {delay})", total=len(log.days))
        for index, (day, frame) in enumerate(iter_frames(log, features)):
            recent.append((day, frame))
            bar.advance(task)
            source = index - 1 - delay
            if source < 0:
                continue
            version_day = log.days[source]
            if version_day != loaded:
                model.load_state_dict(load(fm_dir.snapshot(version_day)))
                loaded = version_day
                if writer.needs_fit():
                    # The snapshot's own training day is always among the recent frames (delay + 2 of them).
                    training_day = next(f for d, f in recent if d == version_day)
                    writer.fit(_run_fm(model, hooks, training_day)["representation"])
            meta = {name: frame.meta[name].numpy() for name in ("event_id", "user_id", "item_id", "ts")}
            writer.write(day, version_day, meta, _run_fm(model, hooks, frame))
    writer.finish()
    prune_snapshots(run_dir, log.days)
    return out


def build_publish_model(config: RunConfig, spec) -> RankingModel:
    """The run's FM as a publish builds it (seeded, with the run's thread count), before a snapshot loads."""
    torch.manual_seed(config.train.seed)
    torch.set_num_threads(config.train.threads)
    return build_model(
        config.fm,
        spec,
        embedding_lr=config.train.embedding_lr,
        embedding_optimizer=config.train.embedding_optimizer,
    )


def publish_delays(
    run: Path,
    config: Path | None = None,
    delays: list[int] | None = None,
    fresh: bool = False,
    console: Console | None = None,
) -> list[Path]:
    """`fxrec publish`: the FM of `run` at each delay (default: the config's `publish.delays`); the config
    comes from `config`, else the run's config.yaml (InputError when it is missing or bad)."""
    run_config = load_run_config(config or Run(run).config_path)
    console = console or Console()
    outs = []
    for days in delays or run_config.publish.delays:
        outs.append(publish(run, run_config, delay=days, fresh=fresh))
        console.print(f"published {run_config.fm.name} (delay {days}) -> {outs[-1]}")
    print_disk_usage(run, console)
    return outs


def _open_user_store(directory: Path, model: RankingModel):
    from fxrec.store import open_store

    assert model.user_tower is not None
    return open_store(f"lmdb://{directory / USER_STORE}", dim=model.user_tower.dim, namespace="user")


def _write_latest(store, columns: dict, user: np.ndarray, version: int) -> None:
    """The day's last embedding per user (what SOAP would hold at the end of the day)."""
    users, ts = columns["user_id"], columns["ts"]
    last = last_row_per_user(users, ts)
    store.put(users[last].astype(np.int64), user[last].astype(np.float32), version, ts[last].astype(np.int64))
