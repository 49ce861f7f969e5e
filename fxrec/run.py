"""A run directory and everything in it: the one place that knows where fxrec keeps what.

    runs/<name>/
      config.yaml                    the config the run used
      events/                        the event log (simulated there, or `events:` points elsewhere)
      models/<model>/                model.yaml (card), model.pt, checkpoint.pt (resumes training),
                                     snapshots/day=*.pt (the FM's; pruned per `train.snapshots`
                                     once published), predictions/day=*.parquet, probe.json (the
                                     low-precision probe, `fxrec probe`)
      publish/<fm>[_delay<k>]/       the FM's published outputs; store/ holds the latest user embeddings
      serving/store, serving/solaris the server's own stores when nothing was published
      report.json, report.html

`Run(root)` reads config.yaml when asked for its config; `Run(root, config)` uses the given one (a
run being made). `ModelDir` is one model's directory; a model's version is the last day it trained
through. `Run.load_model` rebuilds a trained model for serving; `Run.disk_usage` says how much of the
disk the run folder takes, and where.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from fxrec.config import ModelConfig, RunConfig, load_config
from fxrec.data.schema import DatasetSpec
from fxrec.factory import MODEL_CARD, build_model, load_model
from fxrec.models.ranking import RankingModel

WEIGHTS, CHECKPOINT = "model.pt", "checkpoint.pt"
USER_STORE = "store"  # under a publish directory: the latest user embedding per user


@dataclass
class DiskUsage:
    """Bytes on disk of a run folder and of its biggest parts (`str()`: one line for the end of a job)."""

    root: Path
    total: int
    parts: dict[str, int]  # events (when the run holds its log), models, publish, serving, the rest

    def __str__(self) -> str:
        parts = ", ".join(f"{name} {_megabytes(size)}" for name, size in self.parts.items() if size)
        return f"run folder {self.root}: {_megabytes(self.total)}" + (f" ({parts})" if parts else "")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def _bytes_on_disk(path: Path) -> int:
    """What `du` counts: allocated blocks (an LMDB map is a sparse file), every file under `path`."""
    if not path.exists():
        return 0
    files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    total = 0
    for file in files:
        stat = file.stat()
        total += stat.st_blocks * 512 if hasattr(stat, "st_blocks") else stat.st_size
    return total


class RunError(ValueError):
    """A run directory that cannot be served: says which file or model and what is missing."""


@dataclass
class LoadedModel:
    name: str
    model: RankingModel
    config: ModelConfig
    version: str | None  # 'YYYY-MM-DD' the model was trained through

    @property
    def version_int(self) -> int:
        return int(self.version.replace("-", "")) if self.version else 0


class ModelDir:
    """One model's directory: its card, weights, training checkpoint, daily snapshots, predictions."""

    def __init__(self, root: Path | str | os.PathLike):
        self.root = Path(root)

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"ModelDir({str(self.root)!r})"

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def card(self) -> Path:
        return self.root / MODEL_CARD

    @property
    def weights(self) -> Path:
        """The finished model; training writes it last, so its presence means the model is trained."""
        return self.root / WEIGHTS

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    def snapshot(self, day: str) -> Path:
        """The weights as of the end of training day `day`."""
        return self.snapshots / f"day={day}.pt"

    def snapshot_days(self) -> list[str]:
        """The days with a snapshot, oldest first."""
        return sorted(
            p.name.removeprefix("day=").removesuffix(".pt") for p in self.snapshots.glob("day=*.pt")
        )

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    def prediction(self, day: str) -> Path:
        """The predictions for day `day`, made by the model trained through the day before."""
        return self.predictions / f"day={day}.parquet"

    @property
    def probe_json(self) -> Path:
        """The low-precision probe of the trained model (`fxrec probe`, and the report's for the FM)."""
        return self.root / "probe.json"

    @property
    def delay_rates_json(self) -> Path:
        """Per-advertiser conversion-delay rates of a model with window heads, fitted at its training
        cutoff (`fxrec.objectives.window_rates`); `fxrec serve` answers `window_s` with them."""
        return self.root / "delay_rates.json"

    @property
    def dispatch_probe_json(self) -> Path:
        """The probe `dispatch: {plan: auto}` chose the model's plan from, on its first training day."""
        return self.root / "dispatch_probe.json"

    def trained(self) -> bool:
        return self.weights.exists()

    def trained_through(self) -> str | None:
        """The last day the model trained on: its newest daily snapshot (FMs keep them), else the
        training checkpoint's record (VMs skip daily snapshots)."""
        days = self.snapshot_days()
        if days:
            return days[-1]
        if self.checkpoint.exists():
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            return str(state.get("trained_through") or "") or None
        if self.card.exists():  # a model derived from another (`fxrec quantize`) records its source's
            return yaml.safe_load(self.card.read_text()).get("trained_through")
        return None


def trained_through(model_dir: Path | str | ModelDir) -> str | None:
    """`ModelDir(model_dir).trained_through()`."""
    return ModelDir(model_dir).trained_through()


class Run:
    """A run directory: its config, event log, models, published FM outputs, stores and report."""

    def __init__(self, root: Path | str | os.PathLike, config: RunConfig | None = None):
        self.root = Path(root)
        self._config = config

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def config(self) -> RunConfig:
        """The given config, else the run's config.yaml (RunError when there is none)."""
        if self._config is None:
            if not self.config_path.exists():
                raise RunError(
                    f"{self.root}: not a run directory (no config.yaml); make one with `fxrec demo` or `fxrec train`"
                )
            self._config = load_config(self.config_path)
        return self._config

    def write_config(self) -> Path:
        """Record the run's config as config.yaml (creating the run directory)."""
        import yaml

        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        return self.config_path

    @property
    def events(self) -> Path:
        """The event log: the config's `events:`, else the run's own events/ (simulated there)."""
        return Path(self.config.events) if self.config.events else self.root / "events"

    def event_log(self):
        from fxrec.data.eventlog import EventLog

        return EventLog(self.events)

    # -- models -----------------------------------------------------------------------------------
    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> ModelDir:
        return ModelDir(self.models / name)

    def trained_models(self) -> list[str]:
        """Names of the models that finished training, sorted."""
        return sorted(p.name for p in self.models.glob("*") if ModelDir(p).trained())

    def load_model(self, name: str) -> LoadedModel:
        """One trained model of the run, in eval mode, by name (the FM or a VM)."""
        model_dir = self.model(name)
        if not model_dir.trained():
            raise RunError(
                f"{self.root}: no trained model {name!r} (no {model_dir.weights}); trained models: {self.trained_models()}"
            )
        model, config, _ = self._rebuild(model_dir)
        model.eval()
        if model.sparse_arch.jagged_sequences:
            # a model over jagged histories runs fxrec's native kernels: build (or load) them now, not inside
            # the first request (a first build takes ~20 s)
            from fxrec.ops import native

            native.load()
        return LoadedModel(name, model, config, model_dir.trained_through())

    def _rebuild(self, model_dir: ModelDir) -> tuple[RankingModel, ModelConfig, DatasetSpec]:
        """The model card's way (`load_model`) when the model has one; runs trained before model cards
        existed are rebuilt from the run's config.yaml (they have no transfer channels)."""


        if model_dir.card.exists():
            return load_model(model_dir.root)
        config = self.config
        spec = self.event_log().spec
        models = {m.name: m for m in [config.fm, *config.expand_vms(spec.surfaces)]}
        if model_dir.name not in models:
            raise RunError(
                f"{model_dir.root}: no model card ({MODEL_CARD}) and no model {model_dir.name!r} in {self.config_path}"
            )
        model_config = models[model_dir.name]
        model = build_model(model_config, spec)
        model.load_state_dict(torch.load(model_dir.weights, map_location="cpu", weights_only=True))
        return model, model_config, spec

    # -- published FM outputs and stores --------------------------------------------------------------
    @property
    def publish_root(self) -> Path:
        return self.root / "publish"

    def publish_dir(self, fm: str, delay: int = 0) -> Path:
        """What `fxrec publish` writes for FM `fm` with `delay` extra days of staleness."""
        return self.publish_root / (fm if delay == 0 else f"{fm}_delay{delay}")

    def publish_dirs(self, fm: str) -> list[Path]:
        """Every published output of FM `fm` (any delay), to remove when the FM is trained again."""
        return list(self.publish_root.glob(f"{fm}*"))

    def user_store(self, fm: str, delay: int = 0) -> Path:
        """The published user-embedding store (LMDB directory) of FM `fm`."""
        return self.publish_dir(fm, delay) / USER_STORE

    @property
    def serving_dir(self) -> Path:
        return self.root / "serving"

    @property
    def serving_store(self) -> Path:
        """The server's own user-embedding store, when the FM was not published with one."""
        return self.serving_dir / "store"

    @property
    def solaris_cache(self) -> Path:
        """The server's SOLARIS pair cache and aggregates."""
        return self.serving_dir / "solaris"

    # -- disk -------------------------------------------------------------------------------------
    def disk_usage(self) -> DiskUsage:
        """The run folder's size on disk, with its events (when the log lives in the run), models,
        published FM outputs and serving stores."""
        total = _bytes_on_disk(self.root)
        parts = {
            "events": _bytes_on_disk(self.root / "events"),
            "models": _bytes_on_disk(self.models),
            "publish": _bytes_on_disk(self.publish_root),
            "serving": _bytes_on_disk(self.serving_dir),
        }
        parts["other"] = max(total - sum(parts.values()), 0)
        return DiskUsage(self.root, total, parts)

    # -- report -----------------------------------------------------------------------------------
    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    # -- funnel -----------------------------------------------------------------------------------
    @property
    def funnel_dir(self) -> Path:
        """What `fxrec funnel` trains and the server's `/v1/funnel` loads: the early-stage ranker."""
        return self.root / "funnel"

    @property
    def funnel_json(self) -> Path:
        """`fxrec funnel`'s measurements: per stage recall, value kept, sizes; the report reads it."""
        return self.root / "funnel.json"

    @property
    def funnel_png(self) -> Path:
        """`fxrec funnel`'s recall-vs-K plot."""
        return self.root / "funnel_recall.png"
