"""Configs, loaded from YAML. Keys map one-to-one onto constructor arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from fxrec.data.simulator import SimulatorConfig


class ModelConfig(BaseModel):
    """One ranking model: the FM (all features, all surfaces) or a VM (a surface, a feature subset)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    role: Literal["fm", "vm"]
    surfaces: list[str] | None = None  # None: every surface
    features: list[str] | None = None  # None: the FM sees all, a VM the spec's `vm: true` features
    tasks: list[str] | None = None  # None: the dataset's tasks
    embedding_dim: int = 16
    min_count: int = 0  # training occurrences before an id gets its own row (0: every id at once)
    dense_layers: list[int] = [64]
    interaction: dict[str, Any] = {"name": "dcnv2", "num_layers": 2, "low_rank": 32}
    heads: dict[str, Any] = {"kind": "shared_bottom", "hidden": [128, 64]}
    channels: list[str] = []


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=1024, ge=1)
    dense_lr: float = 1e-3
    embedding_lr: float = 0.05
    weight_decay: float = 0.0
    task_weights: dict[str, float] = {}
    checkpoint_every: int = Field(default=200, ge=1)
    report_days: int | None = Field(default=None, ge=1)  # report metrics over the last N evaluation days
    threads: int = 2
    seed: int = 0
    passes_per_day: int = Field(default=1, ge=1)
    shuffle_within_day: bool = True
    keep_snapshots: bool = True  # one model snapshot per trained day (FM versions for publishing)
    max_steps: int | None = None  # stop (resumably) after this many steps; for crash tests


class RunConfig(BaseModel):
    """What `fxrec demo` runs: a log (simulated or imported), one FM and a list of VMs."""

    model_config = ConfigDict(extra="forbid")

    name: str = "demo"
    simulator: SimulatorConfig | None = SimulatorConfig()
    events: str | None = None  # an existing event log instead of simulating
    fm: ModelConfig
    vms: list[ModelConfig] = []
    train: TrainConfig = TrainConfig()
    vm_per_surface: bool = False  # add one VM per surface, built from `vm_template`
    vm_template: ModelConfig | None = None

    def expand_vms(self, surfaces: list[str]) -> list[ModelConfig]:
        vms = list(self.vms)
        if self.vm_per_surface and self.vm_template is not None:
            for surface in surfaces:
                vms.append(self.vm_template.model_copy(update={"name": f"vm_{surface}", "surfaces": [surface]}))
        return vms


def load_config(path: Path | str) -> RunConfig:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    return RunConfig.model_validate(yaml.safe_load(path.read_text()) or {})
