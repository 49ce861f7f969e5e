"""Configs, loaded from YAML. Keys map one-to-one onto constructor arguments (see fxrec.config_types)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from fxrec.config_types import DerivedBlocks, block_union, derive_block
from fxrec.data.simulator import SimulatorConfig
from fxrec.errors import InputError, describe_validation
from fxrec.interactions.registry import INTERACTIONS
from fxrec.lowp.dispatch import Dispatch
from fxrec.lowp.mods import Mods
from fxrec.lowp.pruning import Pruner
from fxrec.models.heads import HEAD_KINDS, TaskHeads
from fxrec.nn.target_attention import TargetAttention
from fxrec.nn.user_tower import UserTower
from fxrec.objectives.c2al import CohortAuxiliary
from fxrec.objectives.feedback import DelayedFeedback
from fxrec.objectives.windows import ConversionWindows
from fxrec.transfer.registry import CHANNELS

# Keys that left a block, with where they went (an old config is told where to put them).
MOVED_INTERACTION_KEYS = {
    "event_type_feature": "a history's event types are declared in the dataset spec, as `event_types: <feature>` "
    "on its sequence feature (spec.yaml; the simulator's `history_surfaces: true` declares hist_surface_id)",
}

# One derived config type per registered class (fxrec.config_types): registering is all it takes.
INTERACTION_CONFIGS = DerivedBlocks(
    INTERACTIONS,
    lambda name, cls: derive_block(cls, f"interaction {name!r}", filled=("num_tokens", "dim"), tag="name", value=name),
)
CHANNEL_CONFIGS = DerivedBlocks(
    CHANNELS,
    lambda name, cls: derive_block(
        cls, f"channel {name!r}", filled=("dim", "tasks", "input_dim"), tag="name", value=name
    ),
)
HEADS_CONFIGS = {
    kind: derive_block(
        TaskHeads,
        f"heads {kind!r}",
        filled=("in_features", "tasks"),
        tag="kind",
        value=kind,
        exclude=tuple(a for other, only in HEAD_KINDS.items() if other != kind for a in only),
    )
    for kind in HEAD_KINDS
}
UserTowerConfig = derive_block(
    UserTower, "user_tower", filled=("num_tokens", "token_dim", "num_dense"), own={"features": (list[str], ...)}
)
TargetAttentionConfig = derive_block(
    TargetAttention, "target_attention", filled=("dim",), own={"query": (list[str], ["item_id"])}
)
ModsConfig = derive_block(Mods, "mods")
DispatchConfig = derive_block(Dispatch, "dispatch")
PruneConfig = derive_block(Pruner, "prune")
WindowsConfig = derive_block(ConversionWindows, "windows")
C2ALConfig = derive_block(CohortAuxiliary, "c2al")
DelayedFeedbackConfig = derive_block(DelayedFeedback, "delayed_feedback")
InteractionConfig = block_union(INTERACTION_CONFIGS, "name", "interaction", moved=MOVED_INTERACTION_KEYS)
HeadsConfig = block_union(HEADS_CONFIGS, "kind", "heads", default="shared_bottom")
ChannelConfig = block_union(CHANNEL_CONFIGS, "name", "transfer channel", bare_string=True)

# Keys of the other role, with what to do instead.
FM_ONLY = {
    "user_tower": "user_tower is an FM key; a VM reads the FM's published user embedding through the `sum` channel",
    "target_attention": "target_attention is an FM key; a VM reads the FM's published TAE through the `tae` channel",
}
VM_ONLY = {
    "channels": "channels are a VM key (role: vm); the FM is what they read from",
    "fm": "fm is a VM key (role: vm): the FM whose published outputs its channels read",
    "fm_delay": "fm_delay is a VM key (role: vm): the staleness of the FM its channels read",
}


class ModelConfig(BaseModel):
    """One ranking model, the shared part of both roles: an `FMConfig` (all features, all surfaces) or a
    `VMConfig` (a surface, a feature subset). `ModelConfig.model_validate(raw)` picks the class by `role`."""

    model_config = ConfigDict(extra="forbid")

    other_role: ClassVar[dict[str, str]] = {}

    name: str
    role: Literal["fm", "vm"]
    surfaces: list[str] | None = None  # None: every surface
    features: list[str] | None = None  # None: the FM sees all, a VM the spec's `vm: true` features
    tasks: list[str] | None = None  # None: the dataset's tasks
    embedding_dim: int = 16
    min_count: int = 0  # training occurrences before an id gets its own row (0: every id at once)
    dense_layers: list[int] = [64]
    interaction: InteractionConfig = Field(default_factory=lambda: INTERACTION_CONFIGS["dcnv2"](num_layers=2, low_rank=32))
    heads: HeadsConfig = Field(default_factory=lambda: HEADS_CONFIGS["shared_bottom"](hidden=[128, 64]))
    # LoKA's low-precision mods for the whole model: {bias, block_norm, activation} (fxrec.lowp.mods); all off.
    mods: ModsConfig = Field(default_factory=ModsConfig)
    # LoKA's dispatch, the number format of each Linear's GEMM: {plan: none | auto | <format>, threshold,
    # min_speedup, backward} (fxrec.lowp.dispatch), or the plan alone (`dispatch: bf16`); none: plain Linears.
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    # Magnitude pruning of the dense Linears while training over the stream, one-shot or D2S:
    # {sparsity, schedule, start_day, ramp_days, refresh_days, scope} (fxrec.lowp.pruning); null: none.
    prune: PruneConfig | None = None
    # Fixed-window conversion heads, one per window, added to the tasks as <label>_<days>d, each
    # trained only on events whose window has closed: {label, days} (fxrec.objectives.windows); null: none.
    windows: WindowsConfig | None = None
    # C2AL: two auxiliary heads on `task`, labels masked to two cohorts, loss weights λ, dropped when
    # the model is loaded to serve: {task, head, tail, head_weight, tail_weight}, each cohort
    # {column, values} or {column, low, high} (fxrec.objectives.c2al.discover_pair finds them); null: none.
    c2al: C2ALConfig | None = None

    def __init__(self, **data: Any):
        if type(self) is ModelConfig:
            raise TypeError("ModelConfig is the base of both roles: build an FMConfig or a VMConfig")
        super().__init__(**data)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> ModelConfig:
        """On ModelConfig itself: an FMConfig or a VMConfig, as `role` says (a model card's config)."""
        if cls is ModelConfig:
            return MODEL_CONFIG.validate_python(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _role_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, message in cls.other_role.items():
                if key in data:
                    raise ValueError(message)
        return data

    @field_validator("dispatch", mode="before")
    @classmethod
    def _dispatch_plan_alone(cls, value: Any) -> Any:
        if value is None:
            return {}
        return {"plan": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _mods_valid(self) -> ModelConfig:
        self.mods.target(**self.mods.kwargs())  # a block size < 1 is an error when the config is read
        self.dispatch.target(**self.dispatch.kwargs())  # so is an unknown plan or backward
        if self.windows is not None:
            windows = self.windows.target(**self.windows.kwargs())  # so are bad days
            clash = [t for t in windows.tasks if t in (self.tasks or [])]
            if clash:
                raise ValueError(f"windows adds the tasks {clash}: leave them out of `tasks`")
        if self.c2al is not None:
            c2al = self.c2al.target(**self.c2al.kwargs())  # so are negative weights or a cohort without members
            clash = [t for t in c2al.tasks if t in (self.tasks or [])]
            if clash:
                raise ValueError(f"c2al adds the tasks {clash}: leave them out of `tasks`")
        if self.prune is not None:
            self.prune.target(**self.prune.kwargs())  # so is a sparsity outside [0, 1)
            if self.dispatch.plan != "none":
                raise ValueError(
                    "prune: and dispatch: together are not supported: a pruned Linear's weight is its mask's "
                    "product, which a LowpLinear cannot take over; quantize the pruned model for serving "
                    "instead (`fxrec quantize`)"
                )
        return self

    def channel_specs(self) -> list[dict[str, Any]]:
        """The transfer channels the model reads, each as {name, **arguments}; an FM reads none."""
        return []


class FMConfig(ModelConfig):
    """The foundation model. Optional parts: a SUM user tower over user-side features (its output is the
    published user embedding) and a target-aware attention of the candidate over the user's history
    (the published TAE)."""

    other_role: ClassVar[dict[str, str]] = VM_ONLY

    role: Literal["fm"] = "fm"
    user_tower: UserTowerConfig | None = None
    target_attention: TargetAttentionConfig | None = None


class VMConfig(ModelConfig):
    """A vertical model: its own surfaces and features, plus transfer channels from a published FM."""

    other_role: ClassVar[dict[str, str]] = FM_ONLY

    role: Literal["vm"] = "vm"
    channels: list[ChannelConfig] = []  # by name or as {name: ..., **constructor arguments}; see fxrec.transfer
    fm: str = "fm"  # the FM whose published outputs the channels read (runs/<name>/publish/<fm>)
    fm_delay: int = Field(default=0, ge=0)  # read the FM published with this many extra days of staleness

    def channel_specs(self) -> list[dict[str, Any]]:
        return [channel.model_dump(mode="json") for channel in self.channels]


MODEL_CONFIG: TypeAdapter[FMConfig | VMConfig] = TypeAdapter(Annotated[FMConfig | VMConfig, Field(discriminator="role")])


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
    probe: bool = True  # the report's low-precision probe of the FM (fxrec.jobs.probe): seconds on CPU
    threads: int = 2
    seed: int = 0
    passes_per_day: int = Field(default=1, ge=1)
    shuffle_within_day: bool = True
    # The FM's daily snapshots (its weights at the end of each trained day), which `fxrec publish` reads:
    # day t's events get the snapshot of day t-1-delay. Training writes one per trained day whatever the
    # policy; once `fxrec publish` has written every configured delay (`publish.delays`, and the
    # experiment's), it prunes the ones the policy does not keep:
    #   keep_last     only the newest (the default: a published run needs no other, and resuming
    #                 training reads checkpoint.pt, never a snapshot);
    #   every_k_days  the last trained day of every `snapshot_every_days` days of the log, plus the newest;
    #   all           none pruned (to publish again later at another delay, or with `--fresh`);
    #   none          none written (an FM that is never published; VMs always train this way).
    # A publish that needs a pruned snapshot fails before writing anything.
    snapshots: Literal["keep_last", "every_k_days", "all", "none"] = "keep_last"
    snapshot_every_days: int = Field(default=7, ge=1)  # every_k_days only
    # VMs keep a snapshot of every trained day too (none by default): what `fxrec quantize --monitor`
    # re-checks, each day's quantized VM against its float32 twin.
    vm_snapshots: bool = False
    max_steps: int | None = None  # stop (resumably) after this many steps; for crash tests
    # Oracle comparison only: train day t on conversions that happen after day t (a leak no real system
    # has). Off, training sees labels as observed at the end of each day (fxrec.data.labels).
    train_on_matured_labels: bool = False
    # What the loop trains conversions on before they have all happened (fxrec.objectives.feedback):
    # {mode: observed | maturity | corrected, label, wait_days, window_days, group, prior_events}, or the
    # mode alone (`delayed_feedback: corrected`). observed (the default): each day at its end, as seen
    # then; maturity: each day `wait_days` later, labels final; corrected: fresh, with the elapsed-time
    # likelihood of a per-advertiser delay model.
    delayed_feedback: DelayedFeedbackConfig = Field(default_factory=DelayedFeedbackConfig)
    # The heads' output bias starts at the label rate of the data trained on so far, shrunk toward 0.5
    # by `bias_prior_events` pseudo-events (2: Laplace's rule), reset before each day until
    # `bias_warmup_events` have been trained on: a tiny first day (one non-click, three clicks) cannot
    # start every model at p ~ 0 or ~ 1 (Trainer.start_at_base_rates).
    bias_prior_events: float = Field(default=2.0, ge=0.0)
    bias_warmup_events: int = Field(default=1000, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _keep_snapshots_was_replaced(cls, data: Any) -> Any:
        if isinstance(data, dict) and "keep_snapshots" in data:
            was = bool(data["keep_snapshots"])
            now = "`snapshots: none`"
            if was:
                now = "`snapshots: all` (every day kept) or `snapshots: keep_last` (the default)"
            raise ValueError(
                "keep_snapshots was replaced by `snapshots: keep_last | every_k_days | all | none`; "
                f"for `keep_snapshots: {str(was).lower()}` write {now}"
            )
        return data

    @field_validator("delayed_feedback", mode="before")
    @classmethod
    def _feedback_mode_alone(cls, value: Any) -> Any:
        if value is None:
            return {}
        return {"mode": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _feedback_valid(self) -> TrainConfig:
        self.delayed_feedback.target(**self.delayed_feedback.kwargs())  # a bad mode or wait is an error here
        return self

    @model_validator(mode="after")
    def _embedding_weight_decay_needs_adam(self) -> TrainConfig:
        # FBGEMM's CPU row-wise AdaGrad accepts a weight_decay and leaves the rows as they were.
        if self.embedding_weight_decay and self.embedding_optimizer != "adam":
            raise ValueError("embedding_weight_decay needs embedding_optimizer: adam")
        return self


class PublishConfig(BaseModel):
    """What `fxrec publish` writes from the FM's snapshots (see fxrec.jobs.publish)."""

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

    channel_sets: dict[str, list[ChannelConfig]]  # {set name: the VM's `channels`}; include "none" and "kd"
    seeds: list[int] = [0, 1, 2]
    delays: list[int] = [0]  # FM staleness in extra days; sets in `delay_sets` also run at each delay > 0
    delay_sets: list[str] = []
    # The last `test_days` evaluation days report the numbers; the earlier ones choose each VM's best
    # channel set. None: the later half of the evaluation days.
    test_days: int | None = Field(default=None, ge=1)


class ReportConfig(BaseModel):
    """`report:` what every report adds: NE, AUC and calibration per cohort along `cohorts` (axes as
    fxrec.metrics.cohorts names them: a categorical column, `<column>:<q>` quantile ranges,
    `advertiser_size`, `user_activity`), each model against `baseline` (default: the FM) with a
    paired user bootstrap of `resamples` draws."""

    model_config = ConfigDict(extra="forbid")

    cohorts: list[str] = ["surface"]
    baseline: str | None = None
    resamples: int = Field(default=200, ge=10)


class FunnelConfig(BaseModel):
    """`funnel:` what `fxrec funnel` runs over a run's candidate log (fxrec.jobs.funnel): retrieval keeps
    `retrieval_k` of each request's eligible ads, the early-stage ranker (ESR) the `esr_k` best of those,
    and the final-stage VM picks `final_k` winners among them. Every default is what a run without a
    `funnel:` block gets."""

    model_config = ConfigDict(extra="forbid")

    retriever: Literal["alure", "popularity", "item_to_item", "two_tower"] = "alure"
    retrieval_k: int = Field(default=200, ge=1)  # candidates retrieval hands the ESR per request
    esr_k: int = Field(default=50, ge=1)  # candidates the ESR hands the final stage
    final_k: int = Field(default=1, ge=1)  # winners the final stage picks (the ads shown)
    vm: str | None = None  # the final-stage VM (default: the run's first VM)
    hide_penalty: float | None = Field(default=None, ge=0.0)  # None: fxrec.funnel.value's default
    eval_days: int = Field(default=2, ge=1)  # the candidate log's last days the funnel is measured on
    max_requests_per_day: int | None = Field(default=400, ge=1)  # sampled requests per day (None: all)
    recall_ks: list[int] = [10, 20, 50, 100, 200, 500]  # the recall-vs-K plot's K values
    neighbours: int = Field(default=50, ge=1)  # ALURE: the user graph's k
    search: Literal["hnsw", "exact"] = "hnsw"  # ALURE: neighbour search
    esr_epochs: int = Field(default=2, ge=1)  # ESR training passes over each day before the evaluated one
    distill: bool = True  # the ESR learns from the final-stage VM's scores too (ranking consistency)
    seed: int = 0

    @model_validator(mode="after")
    def _stages_shrink(self) -> FunnelConfig:
        if not self.retrieval_k >= self.esr_k >= self.final_k:
            raise ValueError(
                f"funnel: each stage keeps at most what the one before it handed on, but retrieval_k "
                f"{self.retrieval_k}, esr_k {self.esr_k}, final_k {self.final_k} do not shrink"
            )
        return self


class TableShardingConfig(BaseModel):
    """Planner constraints for one embedding table when training on several ranks (TorchRec's
    `ParameterConstraints`); None leaves the choice to the planner."""

    model_config = ConfigDict(extra="forbid")

    # data_parallel, table_wise, column_wise, table_column_wise (CPU/gloo and CUDA); row_wise,
    # table_row_wise (CUDA only)
    sharding_types: list[
        Literal["data_parallel", "table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise"]
    ] | None = None
    compute_kernels: list[Literal["fused", "dense"]] | None = None  # data_parallel needs dense
    min_partition: int | None = Field(default=None, ge=1)  # narrowest column-wise shard


class ShardingConfig(BaseModel):
    """`sharding:` how `fxrec train --nproc N` (or torchrun) spreads the tables over the ranks
    (fxrec.dist). `tables` maps a table name, or `*` for every other table, to its constraints."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: NCCL on CUDA, else gloo
    tables: dict[str, TableShardingConfig] = {}
    # 2D sparse parallelism: tables sharded within groups of `group_size` ranks, replicated across
    # the world_size / group_size groups, weights and optimizer state averaged every `sync_every`
    # steps; None: 1D (every table sharded over all ranks).
    group_size: int | None = Field(default=None, ge=1)
    sync_every: int = Field(default=1, ge=1)
    # 2D: the momentum-scaled row-wise AdaGrad (accumulator divided by the number of groups)
    momentum_scaled: bool = True


class RunConfig(BaseModel):
    """What `fxrec demo` runs: a log (simulated or imported), one FM and a list of VMs."""

    model_config = ConfigDict(extra="forbid")

    name: str = "demo"
    simulator: SimulatorConfig | None = SimulatorConfig()
    events: str | None = None  # an existing event log instead of simulating
    fm: FMConfig
    vms: list[VMConfig] = []
    train: TrainConfig = TrainConfig()
    vm_per_surface: bool = False  # add one VM per surface, built from `vm_template`
    vm_template: VMConfig | None = None
    publish: PublishConfig = PublishConfig()
    experiment: ExperimentConfig | None = None
    sharding: ShardingConfig = ShardingConfig()  # several ranks only (fxrec.dist)
    report: ReportConfig = ReportConfig()  # cohort slices of every report (fxrec.report.cohorts)
    funnel: FunnelConfig = FunnelConfig()  # `fxrec funnel`: retrieval -> ESR -> final-stage VM

    @model_validator(mode="after")
    def _experiment_needs_snapshots(self) -> RunConfig:
        # The experiment publishes the FM from its daily snapshots; without them it would fail after training.
        if self.experiment is not None and self.train.snapshots == "none":
            raise ValueError(
                "experiment: the transfer experiment publishes the FM from its daily snapshots, but "
                "train.snapshots is none; use keep_last (the default: pruned once published), every_k_days or all"
            )
        return self

    def expand_vms(self, surfaces: list[str]) -> list[VMConfig]:
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
