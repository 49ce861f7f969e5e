"""Config blocks are typed from constructor signatures: every registered interaction, heads kind and
transfer channel has one, unknown keys are named with the accepted ones, and FM and VM keys stay apart."""

from __future__ import annotations

import inspect

import pytest
import yaml
from pydantic import ValidationError

from fxrec.config import (
    CHANNEL_CONFIGS,
    HEADS_CONFIGS,
    INTERACTION_CONFIGS,
    FMConfig,
    ModelConfig,
    RunConfig,
    TargetAttentionConfig,
    UserTowerConfig,
    VMConfig,
)
from fxrec.interactions.registry import INTERACTIONS
from fxrec.models.heads import HEAD_KINDS, TaskHeads
from fxrec.nn.target_attention import TargetAttention
from fxrec.nn.user_tower import UserTower
from fxrec.transfer.registry import CHANNELS


def _arguments(cls: type, filled: tuple[str, ...]) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", *filled)]


@pytest.mark.parametrize("name", sorted(INTERACTIONS))
def test_every_interaction_has_a_config_type_of_its_constructor_arguments(name):
    block = INTERACTION_CONFIGS[name]
    arguments = _arguments(INTERACTIONS[name], ("num_tokens", "dim"))
    assert list(block.model_fields) == ["name", *arguments]
    assert list(block.arguments) == arguments
    defaults = {n: p.default for n, p in inspect.signature(INTERACTIONS[name].__init__).parameters.items()}
    assert block().kwargs() == {n: defaults[n] for n in arguments}


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_every_channel_has_a_config_type_of_its_constructor_arguments(name):
    block = CHANNEL_CONFIGS[name]
    assert list(block.model_fields) == ["name", *_arguments(CHANNELS[name], ("dim", "tasks", "input_dim"))]


@pytest.mark.parametrize("kind", list(HEAD_KINDS))
def test_every_heads_kind_has_a_config_type_of_the_arguments_it_reads(kind):
    others = [a for other, only in HEAD_KINDS.items() if other != kind for a in only]
    expected = [a for a in _arguments(TaskHeads, ("in_features", "tasks")) if a not in others]
    assert list(HEADS_CONFIGS[kind].model_fields) == expected  # `kind` itself is the tag
    assert HEADS_CONFIGS[kind]().kwargs()["kind"] == kind


def test_user_tower_and_target_attention_are_typed_too():
    assert list(UserTowerConfig.model_fields) == [
        "features",
        *_arguments(UserTower, ("num_tokens", "token_dim", "num_dense")),
    ]
    assert list(TargetAttentionConfig.model_fields) == ["query", *_arguments(TargetAttention, ("dim",))]
    fm = FMConfig(name="fm", user_tower={"features": ["user_id"], "dim": 8}, target_attention={"heads": 4})
    assert fm.user_tower.kwargs() == {"dim": 8, "hidden": None} and fm.user_tower.features == ["user_id"]
    assert fm.target_attention.kwargs() == {"heads": 4} and fm.target_attention.query == ["item_id"]


def _error(raw: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        ModelConfig.model_validate(raw)
    return str(caught.value)


def test_an_unknown_key_lists_the_accepted_keys():
    interaction = _error({"name": "fm", "role": "fm", "interaction": {"name": "dot", "keep_input": False}})
    assert (
        "unknown key 'keep_input' for interaction 'dot'; accepted keys: name, output_tokens, keep_inputs, self_interaction"
        in interaction
    )
    heads = _error({"name": "fm", "role": "fm", "heads": {"kind": "mmoe", "bottom_hidden": [8]}})
    assert (
        "unknown key 'bottom_hidden' for heads 'mmoe'; accepted keys: kind, hidden, num_experts, expert_hidden"
        in heads
    )
    channel = _error({"name": "vm", "role": "vm", "channels": ["kd", {"name": "sum", "stabilise_k": 2}]})
    assert "unknown key 'stabilise_k' for channel 'sum'; accepted keys: name, stabilize_k" in channel
    tower = _error({"name": "fm", "role": "fm", "user_tower": {"features": ["user_id"], "width": 8}})
    assert "unknown key 'width' for user_tower; accepted keys: features, dim, hidden" in tower
    assert "unknown interaction 'dcn3'; known: attention_fm, dcnv2, dhen, dot" in _error(
        {"name": "fm", "role": "fm", "interaction": {"name": "dcn3"}}
    )


def test_fm_keys_on_a_vm_and_vm_keys_on_the_fm_are_rejected():
    assert "user_tower is an FM key" in _error(
        {"name": "vm", "role": "vm", "user_tower": {"features": ["user_id"]}}
    )
    assert "target_attention is an FM key" in _error({"name": "vm", "role": "vm", "target_attention": {}})
    assert "channels are a VM key" in _error({"name": "fm", "role": "fm", "channels": ["kd"]})
    with pytest.raises(ValidationError, match="vms.0.role"):
        RunConfig.model_validate({"fm": {"name": "fm", "role": "fm"}, "vms": [{"name": "x", "role": "fm"}]})
    with pytest.raises(TypeError, match="FMConfig or a VMConfig"):
        ModelConfig(name="fm", role="fm")


def test_model_cards_round_trip_either_role():
    """save_model_card writes `model_dump(mode="json")`; load_model reads it back with ModelConfig.model_validate."""
    fm = FMConfig(
        name="fm",
        interaction={"name": "kunlun", "num_event_types": 2, "event_lengths": [4, None]},
        heads={"kind": "mmoe", "num_experts": 2},
        user_tower={"features": ["user_id"]},
    )
    vm = VMConfig(
        name="vm", surfaces=["feed"], channels=["kd", {"name": "exfm", "adapter": True}], fm_delay=1
    )
    for config in (fm, vm):
        card = yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json")))
        back = ModelConfig.model_validate(card)
        assert type(back) is type(config) and back == config
    assert [c.name for c in vm.channels] == ["kd", "exfm"] and vm.channels[1].adapter


def test_an_interaction_key_that_moved_says_where():
    error = _error(
        {
            "name": "fm",
            "role": "fm",
            "interaction": {"name": "kunlun", "event_type_feature": "hist_surface_id"},
        }
    )
    assert (
        "'event_type_feature' is no longer a key of interaction 'kunlun'" in error and "event_types" in error
    )
