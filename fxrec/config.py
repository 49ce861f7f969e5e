"""Configs, loaded from YAML. Keys map one-to-one onto constructor arguments."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fxrec.data.simulator import SimulatorConfig
from fxrec.errors import InputError, describe_validation
from fxrec.interactions.registry import INTERACTIONS
from fxrec.models.heads import TaskHeads
from fxrec.nn.target_attention import TargetAttention
from fxrec.nn.user_tower import UserTower
from fxrec.transfer.registry import CHANNELS


def check_block(
    block: dict[str, Any],
    cls: type,
    what: str,
    filled: tuple[str, ...],
    own: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
) -> None:
    """A config block's keys are `cls`'s constructor arguments, less those the builder fills in
    (`filled`), plus keys the builder reads itself (`own`); raise ValueError listing the accepted keys."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [*own, *(name for name in parameters if name not in ("self", *filled))]
    for key in block:
        if key not in accepted:
            raise ValueError(f"unknown key {key!r} for {what}; accepted keys: {', '.join(accepted)}")
    for key in required:
        if key not in block:
            raise ValueError(f"{what} needs the key {key!r}; accepted keys: {', '.join(accepted)}")


def check_channels(channels: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
    """Each channel names a registered TransferChannel; a dict's other keys are its constructor's."""
    for channel in channels:
        name = channel if isinstance(channel, str) else channel.get("name")
        if name not in CHANNELS:
            raise ValueError(f"unknown transfer channel {name!r}; known: {', '.join(sorted(CHANNELS))}")
        if isinstance(channel, dict):
            check_block(channel, CHANNELS[name], f"channel {name!r}", filled=("dim", "tasks"), own=("name",))
    return channels


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

    @field_validator("interaction")
    @classmethod
    def _check_interaction(cls, interaction: dict[str, Any]) -> dict[str, Any]:
        name = interaction.get("name")
        if name not in INTERACTIONS:
            raise ValueError(f"unknown interaction {name!r}; known: {', '.join(sorted(INTERACTIONS))}")
        check_block(interaction, INTERACTIONS[name], f"interaction {name!r}", filled=("num_tokens", "dim"), own=("name",))
        return interaction

    @field_validator("heads")
    @classmethod
    def _check_heads(cls, heads: dict[str, Any]) -> dict[str, Any]:
        check_block(heads, TaskHeads, "heads", filled=("in_features", "tasks"))
        return heads

    @field_validator("user_tower")
    @classmethod
    def _check_user_tower(cls, tower: dict[str, Any] | None) -> dict[str, Any] | None:
        if tower is not None:
            check_block(tower, UserTower, "user_tower", filled=("num_tokens", "token_dim", "num_dense"), own=("features",), required=("features",))
        return tower

    @field_validator("target_attention")
    @classmethod
    def _check_target_attention(cls, attention: dict[str, Any] | None) -> dict[str, Any] | None:
        if attention is not None:
            check_block(attention, TargetAttention, "target_attention", filled=("dim",), own=("query",))
        return attention

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, channels: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        return check_channels(channels)

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
    # The heads' output bias starts at the label rate of the data trained on so far, shrunk toward 0.5
    # by `bias_prior_events` pseudo-events (2: Laplace's rule), reset before each day until
    # `bias_warmup_events` have been trained on: a tiny first day (one non-click, three clicks) cannot
    # start every model at p ~ 0 or ~ 1 (Trainer.start_at_base_rates).
    bias_prior_events: float = Field(default=2.0, ge=0.0)
    bias_warmup_events: int = Field(default=1000, ge=0)

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

    @field_validator("channel_sets")
    @classmethod
    def _check_channel_sets(cls, sets: dict[str, list[str | dict[str, Any]]]) -> dict[str, list[str | dict[str, Any]]]:
        for channels in sets.values():
            check_channels(channels)
        return sets


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
    """A run config from YAML; a missing file, bad YAML or a bad key is an InputError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file does not exist" if not path.exists() else f"{path}: not a file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise InputError(f"{path}: not valid YAML{at} ({problem})") from None
    if raw is not None and not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of config keys (name, fm, vms, train, ...), got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw or {})
    except ValidationError as error:
        raise InputError(f"{path}: {describe_validation(error, RunConfig)}") from None
