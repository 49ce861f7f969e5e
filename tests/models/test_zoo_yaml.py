"""Every backbone is a YAML choice, as the FM or as a VM, and `configs/zoo.yaml` runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fxrec.config import ModelConfig, RunConfig, TrainConfig, load_config
from fxrec.data.reader import iter_frames
from fxrec.factory import build_model
from fxrec.interactions.registry import INTERACTIONS
from fxrec.jobs.demo import run_demo
from fxrec.train.trainer import Trainer

ZOO = Path(__file__).resolve().parents[2] / "configs" / "zoo.yaml"
VM_FEATURES = ["item_id", "advertiser_id", "position", "device", "bid", "hist_item_id"]


SINGLE_LAYER = {"dot", "attention_fm"}  # backbones without a depth (`num_layers`) key


@pytest.mark.parametrize("role", ["fm", "vm"])
@pytest.mark.parametrize("backbone", sorted(INTERACTIONS))
def test_every_backbone_trains_as_fm_and_as_vm_from_yaml(backbone, role, small_log, tmp_path):
    text = f"""
        name: {role}_{backbone}
        role: {role}
        embedding_dim: 8
        interaction: {{name: {backbone}{"" if backbone in SINGLE_LAYER else ", num_layers: 1"}}}
        heads: {{kind: mmoe, num_experts: 2, expert_hidden: [16], hidden: [8]}}
    """
    raw = yaml.safe_load(text)
    if role == "vm":  # a VM's own feature subset; sequence backbones need the history in it
        raw.update(surfaces=["feed"], features=VM_FEATURES)
    config = ModelConfig.model_validate(raw)
    torch.manual_seed(0)
    model = build_model(config, small_log.spec)
    assert model.tasks == ["click", "conversion"]
    trainer = Trainer(
        model, TrainConfig(batch_size=64, task_weights={"conversion": 0.5}), tmp_path, progress=False
    )
    _, frame = next(iter_frames(small_log, small_log.spec.select(config.features, config.role)))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("sparse_arch")}
    logits = trainer.train_step(frame.take(torch.arange(64)))
    assert set(logits) == {"click", "conversion"} and all(torch.isfinite(v).all() for v in logits.values())
    moved = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any(n.startswith("interaction.") for n in moved), (
        f"{backbone} as {role}: interaction did not train"
    )


def test_zoo_config_runs_end_to_end(tmp_path):
    config = load_config(ZOO)
    small = config.simulator.model_copy(
        update={"days": 3, "impressions_per_day": 1200, "users": 300, "ads": 60, "new_ads_per_day": 5}
    )
    config = RunConfig.model_validate({**config.model_dump(), "simulator": small.model_dump()})
    backbones = {config.fm.interaction.name, *(vm.interaction.name for vm in config.vms)}
    assert backbones == {"kunlun", "interformer", "dhen", "dcnv2"}
    report = run_demo(config, tmp_path / "run", serve=False)
    models = {m["name"]: m for m in report["models"]}
    assert set(models) == {"fm", "vm_feed_interformer", "vm_stories_dhen", "vm_video_dcnv2"}
    for model in models.values():
        assert 0 < model["ne"] < 1.2 and model["n_eval"] > 0
    from fxrec.factory import load_model

    fm, _, _ = load_model(tmp_path / "run" / "models" / "fm")  # event-level towers, typed by the spec
    assert fm.sparse_arch.type_feature == "hist_surface_id" and len(fm.interaction.towers) == 3


def test_adam_embeddings_train_through_the_pipeline_and_reload(tmp_path):
    """`train.embedding_optimizer: adam` reaches the model build and its card: the FM trains with plain
    tables and reloads from its directory."""
    from fxrec.factory import load_model
    from fxrec.jobs.train import prepare_events, train_model

    config = load_config(ZOO)
    small = config.simulator.model_copy(update={"days": 2, "impressions_per_day": 600, "users": 100, "ads": 30})
    raw = {**config.model_dump(), "simulator": small.model_dump()}
    raw["train"] = {**raw["train"], "embedding_optimizer": "adam"}
    raw["fm"] = {**raw["fm"], "interaction": {"name": "dcnv2", "num_layers": 1}}
    config = RunConfig.model_validate(raw)
    run = tmp_path / "run"
    log = prepare_events(config, run)
    assert build_model(config.fm, log.spec).fused_optimizer() is not None, "by default this FM's tables are fused"
    model_dir = train_model(config.fm, config, run, log, quiet=True)
    model, _, _ = load_model(model_dir)
    assert model.fused_optimizer() is None, "adam needs plain tables that the trainer's optimizer updates"
    assert yaml.safe_load(model_dir.card.read_text())["embedding_optimizer"] == "adam"


def test_pipeline_training_is_reproducible_under_the_run_seed(tmp_path):
    """Two runs of the same config train the same weights: initial weights come from `train.seed` too
    (torch's default generator is randomly seeded per process, and each training advances it)."""
    from fxrec.jobs.train import prepare_events, train_model

    config = load_config(ZOO)
    small = config.simulator.model_copy(update={"days": 2, "impressions_per_day": 600, "users": 100, "ads": 30})
    raw = {**config.model_dump(), "simulator": small.model_dump()}
    raw["fm"] = {**raw["fm"], "interaction": {"name": "dcnv2", "num_layers": 1}}
    config = RunConfig.model_validate(raw)
    weights = []
    for name in ("a", "b"):
        log = prepare_events(config, tmp_path / name)
        torch.manual_seed(len(weights))  # whatever state the caller left behind
        model_dir = train_model(config.fm, config, tmp_path / name, log, quiet=True)
        weights.append(torch.load(model_dir.weights, weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0, msg=key)
