"""Models from configs: build a RankingModel's parts, write its model card, load it back.

`build_model(config, spec)` is the one way fxrec turns a ModelConfig into a RankingModel: it selects
the features, builds the sparse arch, the optional FM parts (user tower, target attention), the dense
arch, the transfer channels, the interaction and the heads, and hands them to the model. A trained
model's directory holds a model card (`model.yaml`: config, the log's spec location, FM widths, and the
low-precision dispatch plan training ended with, `dispatch_plan`), from which `load_model` rebuilds it.

Parts are built in a fixed order (channels, sparse arch, user tower and its projection, target
attention, dense arch, interaction, heads, channel heads), so the same seed gives the same weights.
The config's low-precision `mods` (fxrec.lowp.mods) rewrite the built model last, drawing no random
numbers: a model with mods has the weights of the same model without them, less the dropped biases.
The dispatch plan (fxrec.lowp.dispatch) is not part of building: the trainer applies the config's, and
`load_model` the card's, after the weights are loaded, so inference runs the plan training ended with.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from torch import nn

from fxrec.config import HEADS_CONFIGS, ModelConfig, VMConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.schema import DatasetSpec, FeatureKind
from fxrec.interactions.registry import build_interaction
from fxrec.lowp.dispatch import apply_plan
from fxrec.lowp.mods import Mods
from fxrec.lowp.pruning import Pruner
from fxrec.lowp.quantize import QuantPlan, quantize_in_place
from fxrec.models.checkpoint import load
from fxrec.models.heads import TaskHeads
from fxrec.models.ranking import DenseArch, RankingModel
from fxrec.nn.embeddings import SparseArch
from fxrec.nn.target_attention import TargetAttention
from fxrec.nn.user_tower import UserTower
from fxrec.objectives.c2al import CohortAuxiliary, drop_auxiliary_heads, served_state
from fxrec.objectives.windows import ConversionWindows
from fxrec.transfer.registry import build_channels

MODEL_CARD = "model.yaml"
DISPATCH_PLAN = "dispatch_plan"  # the card's key: {Linear path: format}


def build_model(
    config: ModelConfig,
    spec: DatasetSpec,
    embedding_lr: float = 0.05,
    fm_dims: dict[str, int] | None = None,
    embedding_optimizer: str = "rowwise_adagrad",
) -> RankingModel:
    """A RankingModel from its config. VMs with channels need `fm_dims`, the published FM's widths.

    `embedding_optimizer` is TrainConfig's: row-wise AdaGrad runs fused inside the embedding bags;
    anything else (Adam) needs plain tables whose rows the trainer's optimizer updates.
    """
    features = spec.select(config.features, config.role)
    windows = ConversionWindows(**config.windows.kwargs()) if config.windows is not None else None
    # `tasks: []` with windows: only the window heads
    tasks = list(config.tasks if config.tasks is not None and (config.tasks or windows) else spec.tasks)
    if windows is not None:
        tasks += list(windows.tasks)
    c2al = CohortAuxiliary(**config.c2al.kwargs()) if config.c2al is not None else None
    if c2al is not None:
        if c2al.task not in tasks:
            raise ValueError(f"c2al: its task {c2al.task!r} is not a task of the model ({tasks})")
        tasks += list(c2al.tasks)
    dim = config.embedding_dim
    vm = isinstance(config, VMConfig)
    channels = build_channels(config.channels if vm else [], dim, tasks, fm_dims or {})
    user_tower_config = None if vm else config.user_tower
    attention_config = None if vm else config.target_attention
    interaction = config.interaction  # a typed block (fxrec.config: InteractionConfig)
    sequence_aware = interaction.target.sequence_aware
    has_history = any(f.kind is FeatureKind.sequence for f in features)
    if attention_config is not None and not has_history:
        raise ValueError("target_attention needs a sequence (history) feature among the model's features")
    sparse_arch = SparseArch(
        spec,
        features,
        dim,
        jagged_sequences=sequence_aware or attention_config is not None,
        fused=embedding_optimizer == "rowwise_adagrad",
        embedding_lr=embedding_lr,
        min_count=config.min_count,
    )
    # A jagged history that the interaction does not read itself is mean-pooled into one token.
    pool_history = sparse_arch.jagged_sequences and not sequence_aware and has_history
    token_names = sparse_arch.token_names + (["history"] if pool_history else [])
    dense_names = [f.name for f in features if f.kind is FeatureKind.dense]

    user_tower = user_projection = None
    user_tokens: list[int] = []
    user_dense: list[int] = []
    if user_tower_config is not None:
        wanted = user_tower_config.features
        sequence_names = {f.name for f in features if f.kind is FeatureKind.sequence}
        names = [("history" if pool_history and n in sequence_names else n) for n in wanted]
        unknown = [n for n in names if n not in token_names and n not in dense_names]
        if unknown:
            raise ValueError(
                f"user_tower features {unknown} are not features of this model ({[f.name for f in features]})"
            )
        user_tokens = sorted({token_names.index(n) for n in names if n in token_names})
        user_dense = [dense_names.index(n) for n in names if n in dense_names]
        user_tower = UserTower(len(user_tokens), dim, len(user_dense), **user_tower_config.kwargs())
        user_projection = nn.Linear(user_tower.dim, dim)

    target_attention = None
    query_tokens: list[int] = []
    if attention_config is not None:
        query = attention_config.query
        missing = [n for n in query if n not in token_names]
        if missing:
            raise ValueError(
                f"target_attention query features {missing} are not sparse features of this model"
            )
        query_tokens = [token_names.index(n) for n in query]
        target_attention = TargetAttention(dim, **attention_config.kwargs())

    other_dense = len(dense_names) - len(user_dense)
    dense_arch = DenseArch(other_dense, config.dense_layers or [64], dim) if other_dense else None
    num_tokens = (
        len(token_names)
        - len(user_tokens)
        + (1 if user_tower is not None else 0)
        + (1 if target_attention is not None else 0)
        + (1 if dense_arch is not None else 0)
        + sum(c.num_tokens for c in channels)
    )
    built = build_interaction(interaction.name, num_tokens=num_tokens, dim=dim, **interaction.kwargs())
    if getattr(built, "num_event_types", 1) > 1 and sparse_arch.type_feature is None:
        raise ValueError(
            f"interaction {interaction.name!r} with num_event_types > 1 needs each history entry's event type: "
            "declare it in the dataset spec (`event_types: <feature>` on the history feature) and give the "
            "model that feature"
        )
    top_features = built.num_outputs * dim
    heads = TaskHeads(top_features, tasks, **(config.heads or HEADS_CONFIGS["shared_bottom"]()).kwargs())
    for channel in channels:
        channel.build(top_features)
    model = RankingModel(
        features=[f.name for f in features],
        tasks=tasks,
        sparse_arch=sparse_arch,
        interaction=built,
        heads=heads,
        dense_arch=dense_arch,
        num_dense=len(dense_names),
        pool_history=pool_history,
        user_tower=user_tower,
        user_projection=user_projection,
        user_tokens=user_tokens,
        user_dense=user_dense,
        target_attention=target_attention,
        query_tokens=query_tokens,
        channels=channels,
    )
    Mods(**config.mods.kwargs()).apply(model)  # after every part is built: no mods, no change
    if config.prune is not None:  # after the mods: it masks the weights they leave (fxrec.lowp.pruning)
        Pruner(**config.prune.kwargs()).attach(model)
    if windows is not None:  # the trainer reads them (fxrec.objectives.schedule)
        windows.attach(model)
    if c2al is not None:  # the trainer adds their labels; load_model drops the heads
        c2al.attach(model)
    return model


def save_model_card(
    model_dir: Path,
    config: ModelConfig,
    log: EventLog,
    embedding_lr: float,
    fm_dims: dict[str, int],
    embedding_optimizer: str = "rowwise_adagrad",
) -> None:
    """What `load_model` needs to rebuild this model: its config, the log's spec and the FM widths."""
    model_dir.mkdir(parents=True, exist_ok=True)
    card = {
        "config": config.model_dump(mode="json"),
        "events": str(log.path.resolve()),
        "embedding_lr": embedding_lr,
        "embedding_optimizer": embedding_optimizer,
        "fm_dims": dict(fm_dims),
    }
    (model_dir / MODEL_CARD).write_text(yaml.safe_dump(card, sort_keys=False))


def save_dispatch_plan(model_dir: Path | str, plan: dict[str, str]) -> None:
    """Keep `plan` ({Linear path: format}, fxrec.lowp.dispatch) in the model card, for `load_model`."""
    card_path = Path(model_dir) / MODEL_CARD
    if not card_path.exists():
        raise FileNotFoundError(f"{model_dir} has no {MODEL_CARD}; is it a model trained by fxrec?")
    card = yaml.safe_load(card_path.read_text())
    card[DISPATCH_PLAN] = dict(plan)
    tmp = card_path.with_name(f".{card_path.name}.tmp")
    tmp.write_text(yaml.safe_dump(card, sort_keys=False))
    tmp.replace(card_path)


def load_model(
    model_dir: Path | str, weights: str = "model.pt"
) -> tuple[RankingModel, ModelConfig, DatasetSpec]:
    """A trained model from its directory (runs/<run>/models/<name>), weights loaded, its dispatch plan
    applied, in eval mode; a quantized one (`fxrec quantize`: its card has a `quantization:` plan) is
    quantized before its weights load. C2AL's auxiliary heads are for training only: the model returned
    (served, evaluated, quantized) has none, and their weights are not read."""
    model_dir = Path(model_dir)
    card_path = model_dir / MODEL_CARD
    if not card_path.exists():
        raise FileNotFoundError(f"{model_dir} has no {MODEL_CARD}; is it a model trained by fxrec?")
    card = yaml.safe_load(card_path.read_text())
    config = ModelConfig.model_validate(card["config"])
    spec = DatasetSpec.load(Path(card["events"]) / "spec.yaml")
    model = build_model(
        config,
        spec,
        embedding_lr=card["embedding_lr"],
        fm_dims=card["fm_dims"],
        embedding_optimizer=card.get("embedding_optimizer", "rowwise_adagrad"),  # cards before the option
    )
    auxiliary = CohortAuxiliary.of(model)
    drop_auxiliary_heads(model)  # before the weights: the served model has no C2AL heads to load
    weights_path = model_dir / weights
    if not weights_path.exists():
        raise FileNotFoundError(f"{weights_path} does not exist; has training finished?")
    if "quantization" in card:  # `fxrec quantize` wrote it: quantized weights, for inference only
        model = quantize_in_place(model, QuantPlan.from_dict(card["quantization"]))
        model.load_state_dict(served_state(load(weights_path), auxiliary))
    else:
        model.load_state_dict(served_state(load(weights_path), auxiliary))
        apply_plan(model, card.get(DISPATCH_PLAN) or {})  # the plan training ended with (cards before it: none)
    model.eval()
    return model, config, spec
