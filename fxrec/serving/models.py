"""The models a server runs, loaded from a run directory, with their versions and transfer needs.

A model's version is the last day it was trained through (its newest snapshot); the FM's version as
an int yyyymmdd is what the embedding store tags its writes with, so a reader can tell an embedding
of the serving FM ("fresh") from one of an older FM ("stale").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from fxrec.config import ModelConfig, RunConfig
from fxrec.data.schema import DatasetSpec
from fxrec.models.ranking import RankingModel


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


def run_config(run: Path) -> RunConfig:
    path = run / "config.yaml"
    if not path.exists():
        raise RunError(
            f"{run}: not a run directory (no config.yaml); make one with `fxrec demo` or `fxrec train`"
        )
    return RunConfig.model_validate(yaml.safe_load(path.read_text()))


def trained_through(model_dir: Path) -> str | None:
    """The last day a model trained on: its newest daily snapshot (FMs keep them), else the
    training checkpoint's record (VMs skip daily snapshots)."""
    snapshots = sorted(
        p.name.removeprefix("day=").removesuffix(".pt") for p in (model_dir / "snapshots").glob("day=*.pt")
    )
    if snapshots:
        return snapshots[-1]
    checkpoint = model_dir / "checkpoint.pt"
    if checkpoint.exists():
        return (
            str(torch.load(checkpoint, map_location="cpu", weights_only=True).get("trained_through") or "")
            or None
        )
    return None


def load(run: Path, name: str) -> LoadedModel:
    """One trained model of the run, in eval mode, by name (the FM or a VM)."""
    model_dir = run / "models" / name
    if not (model_dir / "model.pt").exists():
        known = sorted(p.name for p in (run / "models").glob("*") if (p / "model.pt").exists())
        raise RunError(
            f"{run}: no trained model {name!r} (no {model_dir / 'model.pt'}); trained models: {known}"
        )
    model, config, _ = _load_model(model_dir, run)
    model.eval()
    if model.sparse_arch.jagged_sequences:
        # a model over jagged histories runs fxrec's native kernels: build (or load) them now, not inside
        # the first request (a first build takes ~20 s)
        from fxrec.ops import native

        native.load()
    return LoadedModel(name, model, config, trained_through(model_dir))


def _load_model(model_dir: Path, run: Path) -> tuple[RankingModel, ModelConfig, DatasetSpec]:
    """The model card's way (`load_model`) when the model has one; runs trained before model cards
    existed are rebuilt from the run's config.yaml (they have no transfer channels)."""
    if (model_dir / "model.yaml").exists():
        from fxrec.factory import load_model

        return load_model(model_dir)
    from fxrec.data.eventlog import EventLog
    from fxrec.factory import build_model
    from fxrec.pipeline import events_path

    config = run_config(run)
    spec = EventLog(events_path(config, run)).spec
    models = {m.name: m for m in [config.fm, *config.expand_vms(spec.surfaces)]}
    if model_dir.name not in models:
        raise RunError(
            f"{model_dir}: no model card (model.yaml) and no model {model_dir.name!r} in {run / 'config.yaml'}"
        )
    model_config = models[model_dir.name]
    model = build_model(model_config, spec)
    model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
    return model, model_config, spec


def channel_names(config: ModelConfig) -> list[str]:
    return [spec["name"] for spec in config.channel_specs()]


def check_servable(model: LoadedModel) -> None:
    """Every channel of the VM either feeds it nothing at serving (KD, ExFM) or says how to (`serve`)."""
    channels = list(getattr(model.model, "channels", []))
    unsupported = [c.name for c in channels if not c.servable]
    if unsupported:
        raise RunError(
            f"model {model.name!r} uses channel(s) {unsupported}, which the server cannot feed: they add "
            f"tokens but define no `serve`; servable channels of this model: "
            f"{[c.name for c in channels if c.servable]}"
        )
