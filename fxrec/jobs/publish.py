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
    torch.manual_seed(config.train.seed)
    torch.set_num_threads(config.train.threads)
    model = build_model(
        fm_config,
        log.spec,
        embedding_lr=config.train.embedding_lr,
        embedding_optimizer=config.train.embedding_optimizer,
    )
    hooks = _Hooks(model, settings.loopfm_layers)
    features = [log.spec.feature(n) for n in model.features]

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    store = _open_user_store(tmp, model) if settings.store and model.user_tower is not None else None
    autoencoder: MatryoshkaAutoencoder | None = None
    loaded: str | None = None
    recent: deque[tuple[str, EventFrame]] = deque(maxlen=delay + 2)
    dims: dict[str, int] = {}
    versions: dict[str, int] = {}
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
                if autoencoder is None or settings.refit_autoencoder:
                    # The snapshot's own training day is always among the recent frames (delay + 2 of them).
                    training_day = next(f for d, f in recent if d == version_day)
                    reps = torch.from_numpy(_run_fm(model, hooks, training_day)["representation"])
                    autoencoder = autoencoder or MatryoshkaAutoencoder(reps.shape[1], settings.code_dim)
                    autoencoder.fit(reps, epochs=settings.autoencoder_epochs, seed=config.train.seed)
            outputs = _run_fm(model, hooks, frame)
            columns = {
                "event_id": frame.meta["event_id"].numpy(),
                "user_id": frame.meta["user_id"].numpy(),
                "item_id": frame.meta["item_id"].numpy(),
                "ts": frame.meta["ts"].numpy(),
                "fm_version": np.full(frame.num_rows, version_of(version_day), dtype=np.int64),
            }
            columns.update({f"logit_{t}": outputs[f"logit_{t}"] for t in model.tasks})
            for name in ("user", "tae"):
                if name in outputs:
                    columns[name] = _fixed_size(outputs[name])
                    dims[name] = outputs[name].shape[1]
            assert autoencoder is not None
            with torch.no_grad():
                codes = quantize_int4(autoencoder.encode(torch.from_numpy(outputs["representation"]))).numpy()
            columns["loopfm"] = _fixed_size(codes)
            dims["loopfm"] = codes.shape[1]
            write_compact(pa.table(columns), tmp / f"day={day}.parquet")
            versions[day] = version_of(version_day)
            if store is not None:
                _write_latest(store, columns, outputs["user"], version_of(version_day))
    if store is not None:
        store.close()
        compact(tmp / USER_STORE)  # written day by day, read only from now on: drop the replaced pages
    meta = {"fm": fm_config.name, "delay": delay, "tasks": list(model.tasks), "dims": dims, "versions": versions}
    (tmp / PUBLISH_META).write_text(yaml.safe_dump(meta, sort_keys=False))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    prune_snapshots(run_dir, log.days)
    return out


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
