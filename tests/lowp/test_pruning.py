"""Pruning over the stream (fxrec.lowp.pruning): masks hit the target sparsity exactly and every refresh
keeps it, the D2S ramp follows its schedule day by day, one-shot pruned weights stay zero through the
optimizer, a refresh can bring a pruned weight back, logit layers and embeddings are never pruned,
no `prune:` block changes nothing, and a state_dict round trip keeps the masks."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from fxrec.config import ModelConfig, TrainConfig
from fxrec.data.reader import iter_frames
from fxrec.factory import build_model
from fxrec.lowp.pruning import Pruner
from fxrec.models.checkpoint import model_state
from fxrec.run import ModelDir
from fxrec.train.trainer import Trainer, TrainingInterrupted


def _config(tiny_vm_args, prune=None, **extra) -> ModelConfig:
    raw = {**tiny_vm_args, "name": "vm", "heads": {"kind": "mmoe", "num_experts": 2, "hidden": [8]}, **extra}
    if prune is not None:
        raw["prune"] = prune
    return ModelConfig.model_validate(raw)


def _build(config: ModelConfig, spec, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(config, spec)


def _batch(log, model, rows: int = 64):
    _, frame = next(iter_frames(log, [log.spec.feature(n) for n in model.features], surfaces=["feed"]))
    return frame.take(torch.arange(rows))


def _dense(layer: nn.Linear) -> torch.Tensor:
    return layer.parametrizations.weight.original


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_masks_hit_the_target_sparsity_exactly_and_prune_the_smallest(small_log, tiny_vm_args, sparsity):
    model = _build(_config(tiny_vm_args, {"sparsity": sparsity, "scope": "layer"}), small_log.spec)
    pruner = Pruner.of(model)
    pruner.prune_to(sparsity)
    for path, mask in pruner.masks().items():
        assert int((~mask).sum()) == round(sparsity * mask.numel()), path
        dense = _dense(pruner.layers[path]).abs()
        assert dense[~mask].max() <= dense[mask].min()  # by magnitude, within the layer
    # scope global: the count is over all layers together, each layer's share from the ranking
    model = _build(_config(tiny_vm_args, {"sparsity": sparsity, "scope": "global"}), small_log.spec)
    pruner = Pruner.of(model)
    pruner.prune_to(sparsity)
    masks = list(pruner.masks().values())
    total = sum(m.numel() for m in masks)
    assert sum(int((~m).sum()) for m in masks) == round(sparsity * total)
    assert len(set(pruner.layer_sparsity().values())) > 1


def test_the_d2s_ramp_follows_the_schedule_and_refreshes_keep_the_target():
    pruner = Pruner(sparsity=0.8, schedule="d2s", start_day=1, ramp_days=3, refresh_days=1)
    expected = [None, 0.8 * (1 - (2 / 3) ** 3), 0.8 * (1 - (1 / 3) ** 3), 0.8, 0.8, 0.8]
    assert [pruner.sparsity_at(d) for d in range(6)] == pytest.approx(expected)
    every_other = Pruner(sparsity=0.5, schedule="d2s", start_day=2, ramp_days=1, refresh_days=2)
    assert [every_other.sparsity_at(d) for d in range(7)] == [None, None, 0.5, None, 0.5, None, 0.5]
    oneshot = Pruner(sparsity=0.9, schedule="oneshot", start_day=2, ramp_days=3, refresh_days=1)
    assert [oneshot.sparsity_at(d) for d in range(6)] == [None, None, 0.9, None, None, None]


@pytest.mark.parametrize("schedule", ["d2s", "oneshot"])
def test_the_trainer_prunes_day_by_day_as_the_schedule_says(small_log, tiny_vm_args, tmp_path, schedule):
    prune = {"sparsity": 0.8, "schedule": schedule, "start_day": 0, "ramp_days": 2, "refresh_days": 1}
    model = _build(_config(tiny_vm_args, prune), small_log.spec)
    pruner = Pruner.of(model)
    seen: list[tuple[int, float | None, float]] = []
    begin_day = pruner.begin_day

    def spy(days_trained: int) -> float | None:
        chosen = begin_day(days_trained)
        seen.append((days_trained, chosen, pruner.sparsity()))
        return chosen

    pruner.begin_day = spy
    weights = Trainer(
        model, TrainConfig(batch_size=256, snapshots="none"), tmp_path / "vm", progress=False
    ).fit(small_log, surfaces=["feed"])
    assert weights.exists()
    assert [d for d, _, _ in seen] == [0, 1, 2]  # the 4-day log trains days 0..2, the last is only evaluated
    ramp = [0.8 * (1 - 0.5**3), 0.8, 0.8] if schedule == "d2s" else [0.8, None, None]
    assert [c for _, c, _ in seen] == pytest.approx(ramp)
    total = sum(m.numel() for m in pruner.masks().values())
    for _, chosen, now in seen:  # every mask has exactly its day's sparsity; one-shot keeps its own
        rounded = sum(round((chosen or 0.8) * m.numel()) for m in pruner.masks().values()) / total
        assert now == pytest.approx(rounded, abs=1e-12)
    assert pruner.sparsity() == pytest.approx(0.8, abs=0.01)


def test_oneshot_pruned_weights_stay_zero_through_optimizer_steps(small_log, tiny_vm_args, tmp_path):
    model = _build(
        _config(tiny_vm_args, {"sparsity": 0.8, "schedule": "oneshot", "start_day": 1}), small_log.spec
    )
    trainer = Trainer(model, TrainConfig(batch_size=64), tmp_path, progress=False)
    batch = _batch(small_log, model)
    for _ in range(3):  # dense steps first: Adam has momentum on every weight when the prune comes
        trainer.train_step(batch)
    pruner = Pruner.of(model)
    masks = {path: mask.clone() for path, mask in pruner.masks().items()}
    assert all(m.all() for m in masks.values())
    assert pruner.begin_day(1) == 0.8
    masks = {path: mask.clone() for path, mask in pruner.masks().items()}
    for _ in range(5):
        trainer.train_step(batch)
        for path, layer in pruner.layers.items():
            assert torch.equal(pruner.masks()[path], masks[path])  # fixed mask
            assert (_dense(layer)[~masks[path]] == 0).all()
            assert (layer.weight[~masks[path]] == 0).all()
            assert (_dense(layer).grad[~masks[path]] == 0).all()  # the gradient is masked too
            assert (_dense(layer)[masks[path]] != 0).all()
    assert pruner.begin_day(2) is None and pruner.begin_day(5) is None  # pruned once


def test_d2s_serves_the_masked_weights_while_the_dense_ones_keep_learning(small_log, tiny_vm_args, tmp_path):
    model = _build(
        _config(tiny_vm_args, {"sparsity": 0.5, "schedule": "d2s", "start_day": 0}), small_log.spec
    )
    trainer = Trainer(model, TrainConfig(batch_size=64), tmp_path, progress=False)
    pruner = Pruner.of(model)
    pruner.begin_day(0)
    before = {path: _dense(layer).detach().clone() for path, layer in pruner.layers.items()}
    trainer.train_step(_batch(small_log, model))
    moved = 0
    for path, layer in pruner.layers.items():
        mask = pruner.masks()[path]
        assert (layer.weight[~mask] == 0).all()  # the served weights are pruned
        moved += int((_dense(layer)[~mask] != before[path][~mask]).sum())  # straight-through gradient
    assert moved > 0


def test_a_refresh_regrows_a_weight_whose_magnitude_grew(small_log, tiny_vm_args):
    model = _build(_config(tiny_vm_args, {"sparsity": 0.5, "schedule": "d2s"}), small_log.spec)
    pruner = Pruner.of(model)
    pruner.prune_to(0.5)
    path, layer = next(iter(pruner.layers.items()))
    mask = pruner.masks()[path]
    pruned = int((~mask).flatten().nonzero()[0])
    kept_before = int(mask.sum())
    with torch.no_grad():  # the stream drifted toward this weight
        _dense(layer).view(-1)[pruned] = 10 * _dense(layer).abs().max()
    pruner.prune_to(0.5)
    mask = pruner.masks()[path]
    assert bool(mask.view(-1)[pruned])  # back
    assert int(mask.sum()) == kept_before  # and the sparsity is still the target: another weight left
    assert layer.weight.view(-1)[pruned] != 0


def test_logit_layers_and_embeddings_are_never_pruned(small_log, tiny_vm_args):
    model = _build(_config(tiny_vm_args, {"sparsity": 0.9, "scope": "global"}), small_log.spec)
    pruner = Pruner.of(model)
    outputs = list(model.heads.output_layers().values())
    embeddings = {k: v.clone() for k, v in model.sparse_arch.state_dict().items()}
    logits = [layer.weight.detach().clone() for layer in outputs]
    pruner.prune_to(0.9)
    assert not any(layer in pruner.layers.values() for layer in outputs)
    assert all(not hasattr(layer, "parametrizations") for layer in outputs)
    assert all(torch.equal(layer.weight, w) for layer, w in zip(outputs, logits, strict=True))
    assert all(torch.equal(v, embeddings[k]) for k, v in model.sparse_arch.state_dict().items())
    assert not any(k.startswith("sparse_arch") for k in model_state(model) if "mask" in k)
    # every other Linear is pruned: the MMoE's experts and gates, the towers' hidden layers, DCNv2
    others = [m for m in model.modules() if isinstance(m, nn.Linear) and not any(m is o for o in outputs)]
    assert {id(m) for m in others} == {id(m) for m in pruner.layers.values()}
    assert any(".gates." in p for p in pruner.layers) and any("interaction." in p for p in pruner.layers)


def test_no_prune_block_changes_nothing(small_log, tiny_vm_args, tmp_path):
    default = _build(_config(tiny_vm_args), small_log.spec)
    rng_default = torch.get_rng_state()
    off = _build(
        ModelConfig.model_validate({**_config(tiny_vm_args).model_dump(), "prune": None}), small_log.spec
    )
    assert torch.equal(torch.get_rng_state(), rng_default)
    assert Pruner.of(default) is None and Pruner.of(off) is None
    assert str(off) == str(default) and off.state_dict().keys() == default.state_dict().keys()
    assert all(torch.equal(v, off.state_dict()[k]) for k, v in default.state_dict().items())
    # A model whose pruning has not started is the dense model: same draws, same predictions, bit for bit.
    late = _build(_config(tiny_vm_args, {"sparsity": 0.8, "start_day": 10}), small_log.spec)
    assert torch.equal(torch.get_rng_state(), rng_default)
    train = TrainConfig(batch_size=256, snapshots="none")
    for name, model in (("dense", default), ("late", late)):
        Trainer(model, train, tmp_path / name, progress=False).fit(small_log, surfaces=["feed"])
    for day in small_log.days[1:]:
        dense = pq.read_table(ModelDir(tmp_path / "dense").prediction(day))
        pruned = pq.read_table(ModelDir(tmp_path / "late").prediction(day))
        assert dense.equals(pruned), day


def test_a_state_dict_round_trip_keeps_masks_and_the_served_weights(small_log, tiny_vm_args):
    config = _config(tiny_vm_args, {"sparsity": 0.8, "schedule": "d2s", "scope": "global"})
    model = _build(config, small_log.spec, seed=0)
    Pruner.of(model).prune_to(0.8)
    state = model_state(model)
    assert sum(k.endswith(".mask") for k in state) == len(Pruner.of(model).layers)
    again = _build(config, small_log.spec, seed=1)
    again.load_state_dict(state)
    for path, mask in Pruner.of(model).masks().items():
        assert torch.equal(Pruner.of(again).masks()[path], mask)
        assert torch.equal(Pruner.of(again).layers[path].weight, Pruner.of(model).layers[path].weight)
    batch = _batch(small_log, model)
    model.eval(), again.eval()
    with torch.no_grad():
        assert all(torch.equal(again(batch).logits[t], model(batch).logits[t]) for t in model.tasks)
    assert Pruner.of(again).sparsity() == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize(
    "prune, message",
    [
        ({"sparsity": 1.0}, "0 <= sparsity < 1"),
        ({"schedule": "gradual"}, "schedule"),
        ({"ramp_days": 0}, "ramp_days"),
        ({"refresh": 2}, "unknown key 'refresh' for prune; accepted keys: sparsity, schedule"),
    ],
)
def test_bad_prune_blocks_are_rejected(tiny_vm_args, prune, message):
    with pytest.raises(ValidationError, match=message):
        _config(tiny_vm_args, prune)


def test_an_interrupted_run_resumes_with_its_masks_to_the_same_predictions(small_log, tiny_vm_args, tmp_path):
    config = _config(tiny_vm_args, {"sparsity": 0.8, "schedule": "d2s", "start_day": 1, "ramp_days": 2})
    train = TrainConfig(batch_size=256, snapshots="none", checkpoint_every=3)
    Trainer(_build(config, small_log.spec), train, tmp_path / "whole", progress=False).fit(
        small_log, surfaces=["feed"]
    )
    stopped = train.model_copy(update={"max_steps": 10})  # mid-way through day 1, after its first mask
    with pytest.raises(TrainingInterrupted):
        Trainer(_build(config, small_log.spec), stopped, tmp_path / "resumed", progress=False).fit(
            small_log, surfaces=["feed"]
        )
    model = _build(config, small_log.spec, seed=7)  # other initial weights: the checkpoint replaces them
    Trainer(model, train, tmp_path / "resumed", progress=False).fit(small_log, surfaces=["feed"])
    for day in small_log.days[1:]:
        whole = pq.read_table(ModelDir(tmp_path / "whole").prediction(day)).drop(["trained_through"])
        resumed = pq.read_table(ModelDir(tmp_path / "resumed").prediction(day)).drop(["trained_through"])
        assert whole.equals(resumed), day
    assert Pruner.of(model).sparsity() == pytest.approx(0.8, abs=0.01)
