"""Configs, loaded from YAML. Keys map one-to-one onto constructor arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    # FM only: a SUM user tower over user-side features (its output is the published user embedding)
    # and a target-aware attention of the candidate over the user's history (the published TAE).
    user_tower: dict[str, Any] | None = None
    target_attention: dict[str, Any] | None = None
    # VM only: transfer channels, by name or as {name: ..., **constructor arguments}; see fxrec.transfer.
    channels: list[str | dict[str, Any]] = []
    fm: str = "fm"  # the FM whose published outputs the channels read (runs/<name>/publish/<fm>)
    fm_delay: int = Field(default=0, ge=0)  # read the FM published with this many extra days of staleness

    def channel_specs(self) -> list[dict[str, Any]]:
        return [{"name": c} if isinstance(c, str) else dict(c) for c in self.channels]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=1024, ge=1)
    dense_lr: float = 1e-3
    embedding_lr: float = 0.05
    # Embedding rows: FBGEMM's fused row-wise AdaGrad (the default, fast), or Adam on plain TorchRec
    # tables (FuxiCTR's and DeepCTR's choice; CPU TBEs have no fused Adam, so it runs unfused).
    embedding_optimizer: Literal["rowwise_adagrad", "adam"] = "rowwise_adagrad"
    # Adam only: L2 on every row, Adam's coupled weight decay (= FuxiCTR's embedding_regularizer).
    embedding_weight_decay: float = Field(default=0.0, ge=0.0)
    weight_decay: float = 0.0  # dense parameters (Adam)
    # Dense learning-rate schedule by optimizer step (the defaults keep dense_lr constant): a linear
    # warmup over the first `dense_lr_warmup_steps` steps, then x `dense_lr_decay` every
    # `dense_lr_decay_steps` steps (exponential, continuous). Per step, not per epoch, so the
    # progressive loop and the holdout epochs share it; embedding rows keep their own rate.
    dense_lr_warmup_steps: int = Field(default=0, ge=0)
    dense_lr_decay: float = Field(default=1.0, gt=0.0, le=1.0)
    dense_lr_decay_steps: int = Field(default=1, ge=1)
    task_weights: dict[str, float] = {}
    checkpoint_every: int = Field(default=200, ge=1)
    report_days: int | None = Field(default=None, ge=1)  # report metrics over the last N evaluation days
    threads: int = 2
    seed: int = 0
    passes_per_day: int = Field(default=1, ge=1)
    shuffle_within_day: bool = True
    keep_snapshots: bool = True  # one model snapshot per trained day (FM versions for publishing)
    max_steps: int | None = None  # stop (resumably) after this many steps; for crash tests
    # Oracle comparison only: train day t on conversions that happen after day t (a leak no real system
    # has). Off, training sees labels as observed at the end of each day (fxrec.data.labels).
    train_on_matured_labels: bool = False

    @model_validator(mode="after")
    def _embedding_weight_decay_needs_adam(self) -> TrainConfig:
        # FBGEMM's CPU row-wise AdaGrad accepts a weight_decay and leaves the rows as they were.
        if self.embedding_weight_decay and self.embedding_optimizer != "adam":
            raise ValueError("embedding_weight_decay needs embedding_optimizer: adam")
        return self


class PublishConfig(BaseModel):
    """What `fxrec publish` writes from the FM's snapshots (see fxrec.transfer.publish)."""

    model_config = ConfigDict(extra="forbid")

    delays: list[int] = [0]  # extra days of FM staleness to publish for (0: the snapshot of the day before)
    loopfm_layers: list[str] = ["top"]  # "top" (the interaction output) or FM submodule names to hook
    code_dim: int = Field(default=16, ge=1)  # LoopFM code width (int4 each)
    autoencoder_epochs: int = Field(default=2, ge=1)
    refit_autoencoder: bool = False  # refit on every new FM version (False: fit once, codes stay comparable)
    store: bool = True  # also write the latest user embeddings into the LMDB embedding store


class ExperimentConfig(BaseModel):
    """`fxrec experiment transfer`: every VM x channel set x seed, on the same evaluation events."""

    model_config = ConfigDict(extra="forbid")

    channel_sets: dict[str, list[str | dict[str, Any]]]  # {set name: the VM's `channels`}; include "none" and "kd"
    seeds: list[int] = [0, 1, 2]
    delays: list[int] = [0]  # FM staleness in extra days; sets in `delay_sets` also run at each delay > 0
    delay_sets: list[str] = []
    # The last `test_days` evaluation days report the numbers; the earlier ones choose each VM's best
    # channel set. None: the later half of the evaluation days.
    test_days: int | None = Field(default=None, ge=1)


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
    publish: PublishConfig = PublishConfig()
    experiment: ExperimentConfig | None = None

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
