"""LoKA's mods: BlockNorm and hard-swish match their formulas, `mods:` rewrites a whole model (no bias but
the logits, BlockNorm on wide Linears, no exponential activations), and with every mod off nothing changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError
from torch import nn

from fxrec.config import ModelConfig, TrainConfig
from fxrec.data.reader import iter_frames
from fxrec.factory import build_model
from fxrec.jobs.train import _same_config
from fxrec.lowp.mods import Mods
from fxrec.models.heads import TaskHeads
from fxrec.nn.block_norm import DEFAULT_EPS, BlockNorm, BlockNormLinear, block_norm
from fxrec.nn.mlp import ACTIVATIONS, MLP
from fxrec.nn.token_mixing import TokenLinear
from fxrec.run import ModelDir
from fxrec.train.trainer import LabelTally, Trainer

ALL_ON = {"bias": False, "block_norm": 16, "activation": "hardswish"}


def _block_norm_numpy(x: np.ndarray, block: int, eps: float = DEFAULT_EPS) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float64)
    for start in range(0, x.shape[-1], block):
        part = x[..., start : start + block].astype(np.float64)
        out[..., start : start + block] = part / np.sqrt((part**2).mean(-1, keepdims=True) + eps)
    return out


@pytest.mark.parametrize("width, block", [(12, 4), (10, 4), (3, 8), (640, 256)])
def test_block_norm_is_rms_norm_per_block_the_last_block_over_its_own_length(width, block):
    x = torch.randn(5, width, dtype=torch.float64) * 3 + 1
    expected = _block_norm_numpy(x.numpy(), block)
    np.testing.assert_allclose(BlockNorm(block)(x.float()).numpy(), expected, rtol=1e-5, atol=1e-6)
    tokens = x.reshape(5, 1, width).expand(5, 2, width).float()  # any leading shape
    np.testing.assert_allclose(block_norm(tokens, block)[:, 1].numpy(), expected, rtol=1e-5, atol=1e-6)
    if width % block:  # the ragged last block has RMS 1 over its own features
        tail = BlockNorm(block)(x.float())[:, width // block * block :]
        np.testing.assert_allclose(tail.square().mean(-1).numpy(), 1.0, rtol=1e-4)


def test_block_norm_keeps_zeros_and_dtype_and_computes_in_float32():
    assert torch.equal(BlockNorm(4)(torch.zeros(2, 10)), torch.zeros(2, 10))
    x = torch.randn(4, 512) * 300  # squares overflow float16
    out = BlockNorm(256)(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    np.testing.assert_allclose(
        out.float().numpy(), _block_norm_numpy(x.half().float().numpy(), 256), atol=2e-3
    )
    with pytest.raises(ValueError, match="block >= 1"):
        BlockNorm(0)


def test_block_norm_linear_normalizes_the_linear_output_with_its_own_parameters():
    linear = nn.Linear(6, 10)
    wrapped = BlockNormLinear(linear, block=4)
    assert wrapped.weight is linear.weight and wrapped.bias is linear.bias
    assert list(wrapped.state_dict()) == ["weight", "bias"] and isinstance(wrapped, nn.Linear)
    x = torch.randn(3, 6)
    torch.testing.assert_close(wrapped(x), block_norm(linear(x), 4))


def test_hardswish_by_name_is_x_relu6_of_x_plus_3_over_6():
    x = torch.linspace(-6, 6, 97)
    expected = x.numpy() * np.clip(x.numpy() + 3, 0, 6) / 6
    np.testing.assert_allclose(ACTIVATIONS["hardswish"]()(x).numpy(), expected, atol=1e-6)
    mlp = MLP(4, [8, 2], activation="hardswish")
    assert sum(isinstance(m, nn.Hardswish) for m in mlp.modules()) == 2


def _config(mods=None, **extra) -> ModelConfig:
    raw = {
        "name": "fm",
        "role": "fm",
        "embedding_dim": 8,
        "dense_layers": [16],
        "interaction": {"name": "interformer", "num_layers": 1},  # SiLU MLPs, TokenLinears, sequence arch
        "heads": {"kind": "mmoe", "num_experts": 2, "expert_hidden": [32], "hidden": [16]},
        **extra,
    }
    if mods is not None:
        raw["mods"] = mods
    return ModelConfig.model_validate(raw)


def _build(config: ModelConfig, spec, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(config, spec)
    return model, torch.get_rng_state()


def test_mods_off_builds_the_identical_model_with_the_same_random_draws(small_log):
    default, rng_default = _build(_config(), small_log.spec)
    off, rng_off = _build(_config({"bias": True, "block_norm": None, "activation": None}), small_log.spec)
    assert str(off) == str(default)
    assert torch.equal(rng_off, rng_default)
    assert default.state_dict().keys() == off.state_dict().keys()
    assert all(torch.equal(v, off.state_dict()[k]) for k, v in default.state_dict().items())
    # With mods the same seed draws the same weights too: mods only rewrite the built model.
    on, rng_on = _build(_config(ALL_ON), small_log.spec)
    assert torch.equal(rng_on, rng_default)
    on_state = on.state_dict()
    assert set(on_state) < set(default.state_dict())
    assert all(torch.equal(v, default.state_dict()[k]) for k, v in on_state.items())


def test_no_bias_but_the_logits_and_the_model_still_trains(small_log, tmp_path):
    model, _ = _build(_config({"bias": False}), small_log.spec)
    outputs = {id(layer) for layer in model.heads.output_layers().values()}
    with_bias = [m for m in model.modules() if isinstance(m, nn.Linear | TokenLinear) and m.bias is not None]
    assert {id(m) for m in with_bias} == outputs and len(outputs) == 2
    # InterFormer's token maps (TokenLinear) lost theirs too.
    assert any(isinstance(m, TokenLinear) for m in model.modules())

    trainer = Trainer(model, TrainConfig(batch_size=64), tmp_path, progress=False)
    _, frame = next(iter_frames(small_log, small_log.spec.select(None, "fm")))
    trainer.start_at_base_rates(LabelTally(model.tasks).add(frame), "day 1")  # sets the kept output biases
    batch = frame.take(torch.arange(64))
    loss, _ = trainer.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    dense = {n: p for n, p in model.named_parameters() if not n.startswith("sparse_arch")}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dense.values())
    assert all(
        p.grad.abs().sum() > 0 for n, p in dense.items() if n.startswith(("interaction.", "heads.towers"))
    )
    before = {n: p.detach().clone() for n, p in dense.items()}
    logits = trainer.train_step(batch)
    assert all(torch.isfinite(v).all() for v in logits.values())
    assert any(not torch.equal(p, before[n]) for n, p in dense.items())


def test_activation_mod_leaves_no_silu_or_gelu_and_block_norm_wraps_wide_linears(small_log):
    model, _ = _build(_config({"activation": "hardswish", "block_norm": 16}), small_log.spec)
    assert not any(isinstance(m, nn.SiLU | nn.GELU) for m in model.modules())
    assert any(isinstance(m, nn.Hardswish) for m in model.modules())
    outputs = {id(layer) for layer in model.heads.output_layers().values()}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module) not in outputs:
            assert isinstance(module, BlockNormLinear) == (module.out_features >= 16), module
    assert not any(isinstance(m, BlockNormLinear) for m in model.heads.output_layers().values())
    _, frame = next(iter_frames(small_log, small_log.spec.select(None, "fm")))
    logits = model(frame.take(torch.arange(32))).logits
    assert all(torch.isfinite(v).all() for v in logits.values())


def test_applying_mods_twice_changes_nothing_more():
    heads = TaskHeads(32, ["click"], hidden=[32, 32])
    mods = Mods(**ALL_ON)
    first = mods.apply(heads)
    assert first["bias"] and first["block_norm"]
    assert mods.apply(heads) == {"bias": [], "block_norm": [], "activation": []}


def test_a_model_with_mods_rebuilds_from_its_card_and_loads_its_weights(small_log):
    config = _config(ALL_ON)
    model, _ = _build(config, small_log.spec)
    again = ModelConfig.model_validate(config.model_dump(mode="json"))
    assert again.mods.kwargs() == {"bias": False, "block_norm": 16, "activation": "hardswish"}
    rebuilt, _ = _build(again, small_log.spec, seed=1)
    rebuilt.load_state_dict(model.state_dict())  # strict: the same keys, no biases on either side
    # A card written before the option has no `mods`: every mod off.
    old = config.model_dump(mode="json")
    del old["mods"]
    assert not Mods(**ModelConfig.model_validate(old).mods.kwargs()).active


def test_channel_heads_keep_their_logit_bias_and_own_parameters_are_left_alone(small_log):
    vm = ModelConfig.model_validate(
        {
            "name": "vm",
            "role": "vm",
            "surfaces": ["feed"],
            "embedding_dim": 8,
            "interaction": {"name": "dcnv2", "num_layers": 1, "low_rank": 4},
            "heads": {"hidden": [8]},
            "channels": [{"name": "exfm", "adapter": True, "hidden": [8]}],
            "mods": {"bias": False},
        }
    )
    model, _ = _build(vm, small_log.spec)
    exfm = model.channels[0]
    for head in (exfm.aux_head, exfm.adapter_head):
        assert all(layer.bias is not None for layer in head.output_layers().values())
        assert all(
            m.bias is None
            for m in head.modules()
            if isinstance(m, nn.Linear) and m not in head.output_layers().values()
        )
    # The student adapter steps with its own optimizer, which holds its parameters: untouched.
    assert all(m.bias is not None for m in exfm.adapter.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize(
    "mods, message",
    [
        (
            {"bias": False, "blocknorm": 256},
            "unknown key 'blocknorm' for mods; accepted keys: bias, block_norm, activation",
        ),
        ({"block_norm": 0}, "block_norm is a block size >= 1"),
        ({"activation": "gelu"}, "hardswish"),
    ],
)
def test_bad_mods_are_rejected_naming_the_accepted_ones(mods, message):
    with pytest.raises(ValidationError, match=message):
        _config(mods)


def test_a_model_trained_before_the_option_is_not_retrained_for_it(tmp_path):
    config = _config()
    card = config.model_dump(mode="json")
    del card["mods"]  # as written before `mods` existed
    model_dir = ModelDir(tmp_path / "fm")
    model_dir.root.mkdir()
    model_dir.card.write_text(yaml.safe_dump({"config": card}))
    assert _same_config(model_dir, config)
    assert not _same_config(model_dir, _config({"bias": False}))
