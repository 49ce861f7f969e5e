"""LoKA's dispatch: LowpLinear is nn.Linear in fp32 and the format's GEMM otherwise, with a straight-through
backward; plans never take a layer over the error threshold or under the speed-up floor; apply_plan keeps
every Parameter; the plan a model trains with reaches its card and every load."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from pydantic import ValidationError
from torch import nn

from fxrec.config import FMConfig, ModelConfig, RunConfig, TrainConfig
from fxrec.lowp import FORMATS, Probe
from fxrec.lowp.dispatch import (
    Dispatch,
    LowpLinear,
    apply_plan,
    current_plan,
    dispatchable,
    plan_from_probe,
    uniform_plan,
)
from fxrec.lowp.report import FormatResult, LayerReport, ProbeReport
from fxrec.lowp.stats import weight_stats
from fxrec.models.heads import TaskHeads
from fxrec.nn.block_norm import BlockNormLinear, block_norm

LOW = ["bf16", "fp16", "int8_rowwise", "int8_tensorwise", "fp8_e4m3_rowwise", "fp8_e5m2_tensorwise"]


def _pair(in_features=16, out_features=8, seed=0) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    plain = nn.Linear(in_features, out_features)
    twin = nn.Linear(in_features, out_features)
    twin.load_state_dict(plain.state_dict())
    return plain, twin


# -- LowpLinear ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 16), (3, 4, 16), (0, 16)])
def test_fp32_is_nn_linear_bit_for_bit_forward_and_grads(shape):
    plain, twin = _pair()
    lowp = LowpLinear.from_linear(twin, "fp32")
    x = torch.randn(*shape)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), lowp(xb)
    assert torch.equal(ya, yb)
    gy = torch.randn_like(ya)
    ya.backward(gy)
    yb.backward(gy)
    assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(plain.weight.grad, lowp.weight.grad) and torch.equal(plain.bias.grad, lowp.bias.grad)
    # built directly, as nn.Linear is: the same parameters and state_dict keys
    direct = LowpLinear(16, 8, bias=False, format="bf16")
    assert list(direct.state_dict()) == ["weight"] and direct.bias is None


@pytest.mark.parametrize("format", LOW)
def test_low_precision_forward_is_the_formats_gemm_plus_bias(format):
    plain, twin = _pair(24, 8)
    lowp = LowpLinear.from_linear(twin, format)
    x = torch.randn(2, 6, 24)  # any leading shape: rows of 24 features
    y = lowp(x)
    assert y.shape == (2, 6, 8) and y.dtype == torch.float32
    expected = FORMATS[format].emulate(x.reshape(-1, 24), plain.weight.detach()) + plain.bias.detach()
    expected = expected.reshape(2, 6, 8)
    # kernels differ from the emulation only in summation order, and bf16/fp16 in rounding their output
    rtol = {"bf16": 2**-7, "fp16": 2**-10}.get(format, 1e-5)
    torch.testing.assert_close(y, expected, rtol=rtol, atol=rtol * float(expected.abs().mean()))
    if format.startswith("int8"):  # int32 accumulation: exact
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    ref = plain(x)
    assert 0 < (y - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("format", ["bf16", "int8_rowwise", "fp8_e4m3_tensorwise"])
def test_backward_is_the_straight_through_gradient(format):
    plain, twin = _pair(16, 8)
    lowp = LowpLinear.from_linear(twin, format)
    x = torch.randn(3, 5, 16, requires_grad=True)
    y = lowp(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    g2, x2, w = gy.reshape(-1, 8), x.detach().reshape(-1, 16), plain.weight.detach()
    assert torch.equal(x.grad, (g2 @ w).reshape(3, 5, 16))  # grad_x = grad_y W, in float32
    assert torch.equal(lowp.weight.grad, g2.T @ x2)
    assert torch.equal(lowp.bias.grad, g2.sum(0))
    # ... which is autograd through the emulated forward with a straight-through estimator
    xs = x.detach().clone().requires_grad_()
    rows = xs.reshape(-1, 16)
    exact = rows @ plain.weight.T
    emulated = FORMATS[format].emulate(rows.detach(), w)
    (exact + (emulated - exact).detach() + plain.bias).reshape(3, 5, 8).backward(gy)
    torch.testing.assert_close(xs.grad, x.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(plain.weight.grad, lowp.weight.grad, rtol=1e-6, atol=1e-5)


def test_bf16_backward_casts_both_operands_of_each_gemm():
    _, twin = _pair(16, 8)
    lowp = LowpLinear.from_linear(twin, "fp32", backward="bf16")
    x = torch.randn(6, 16, requires_grad=True)
    y = lowp(x)
    torch.testing.assert_close(y, x @ twin.weight.T + twin.bias)  # forward: the fp32 GEMM
    gy = torch.randn_like(y)
    y.backward(gy)
    b = torch.bfloat16
    assert torch.equal(x.grad, (gy.to(b) @ twin.weight.detach().to(b)).float())
    assert torch.equal(twin.weight.grad, (gy.to(b).T @ x.detach().to(b)).float())
    torch.testing.assert_close(x.grad, gy @ twin.weight.detach(), rtol=2**-6, atol=0.05)


def test_eval_reuses_the_prepared_weight_until_it_changes_training_prepares_every_step(monkeypatch):
    fmt = FORMATS["int8_rowwise"]
    builds = []
    prepare = fmt.prepare
    monkeypatch.setattr(fmt, "prepare", lambda w: builds.append(1) or prepare(w))
    _, twin = _pair(16, 8)
    lowp = LowpLinear.from_linear(twin, "int8_rowwise")
    x = torch.randn(4, 16)
    lowp.eval()
    with torch.no_grad():
        first = lowp(x)
        lowp(x)
        lowp(x)
    assert len(builds) == 1  # prepared once
    with torch.no_grad():
        lowp.weight.mul_(2)  # an optimizer step, in place: the weight's version moves on
        second = lowp(x)
    assert len(builds) == 2
    torch.testing.assert_close(second - lowp.bias, 2 * (first - lowp.bias), rtol=1e-5, atol=1e-5)
    lowp.load_state_dict({"weight": torch.randn(8, 16), "bias": torch.zeros(8)})
    with torch.no_grad():
        third = lowp(x)
    assert len(builds) == 3
    torch.testing.assert_close(third, fmt.emulate(x, lowp.weight.detach()), rtol=0, atol=1e-6)
    lowp.train()
    for _ in range(3):
        lowp(x).sum().backward()
    assert len(builds) == 6  # one preparation per training step


def test_block_norm_linear_keeps_its_norm_and_bad_settings_are_rejected():
    torch.manual_seed(0)
    wide = BlockNormLinear(nn.Linear(8, 12), block=4)
    lowp = LowpLinear.from_linear(wide, "bf16")
    assert lowp.weight is wide.weight and list(lowp.state_dict()) == ["weight", "bias"]
    x = torch.randn(5, 8)
    torch.testing.assert_close(
        lowp(x), block_norm(nn.functional.linear(x, wide.weight, wide.bias), 4), rtol=0.02, atol=0.02
    )
    with pytest.raises(ValueError, match="unknown format 'int4'; formats: fp32, bf16"):
        lowp.format = "int4"
    with pytest.raises(ValueError, match="backwards: fp32, bf16"):
        LowpLinear(4, 2, backward="fp16")


# -- plans from the probe ------------------------------------------------------------------------
def _outlier_layer() -> tuple[nn.Linear, torch.Tensor]:
    """A Linear whose input has one feature with huge outliers and a tiny weight column for it: a single
    scale per tensor (or per row of x) is spent on that feature and rounds every other one to zero."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight[:, 0] *= 1e-4
    x = torch.randn(512, 64)
    x[:, 0] *= 1e4
    return layer, x


def test_dispatch_never_picks_a_candidate_over_the_error_threshold():
    layer, x = _outlier_layer()
    model = nn.Sequential(layer)
    with Probe(model) as probe, torch.no_grad():
        model(x)
    report = probe.report(
        formats=["bf16", "int8_tensorwise", "int8_rowwise", "fp8_e4m3_tensorwise"], samples=256, repeats=1
    )
    results = {r.format: r for r in report.layer("0").results}
    assert not results["int8_tensorwise"].safe and results["int8_tensorwise"].error > 0.2  # forced unsafe
    assert results["bf16"].safe
    plan = plan_from_probe(report)
    assert plan["0"] == "fp32" or results[plan["0"]].error <= report.threshold
    # Whatever the timings, an unsafe candidate is never chosen, even as the fastest by far.
    faked = [
        dataclasses.replace(
            r, speedup=9.0 if r.format == "int8_tensorwise" else (1.5 if r.format != "fp32" else 1.0)
        )
        for r in results.values()
    ]
    fake = dataclasses.replace(report, layers=[dataclasses.replace(report.layer("0"), results=faked)])
    chosen = plan_from_probe(fake)["0"]
    assert chosen != "int8_tensorwise" and results[chosen].error <= 0.2
    assert plan_from_probe(fake, threshold=1e9)["0"] == "int8_tensorwise"  # the threshold is what kept it out
    apply_plan(model, plan_from_probe(fake))
    assert isinstance(model[0], LowpLinear) and model[0].format == chosen


def _fake_report(speedups: dict[str, float | None], errors: dict[str, float] | None = None) -> ProbeReport:
    layer = nn.Linear(4, 2)
    results = [FormatResult("fp32", "torch.mm", 0.0, 1e-5, 1.0, True, False)]
    for name, speedup in speedups.items():
        error = (errors or {}).get(name, 0.01)
        results.append(
            FormatResult(
                name,
                "k",
                error,
                None if speedup is None else 1e-5 / speedup,
                speedup,
                error <= 0.2,
                bool(speedup and speedup >= 1.05),
            )
        )
    return ProbeReport(
        [LayerReport("layer", 4, 2, 100, weight_stats(layer), results)],
        threshold=0.2,
        min_speedup=1.05,
        samples=8,
        device="cpu",
    )


def test_min_speedup_is_respected_and_the_fastest_kept_candidate_wins():
    assert plan_from_probe(_fake_report({"bf16": 1.04})) == {"layer": "fp32"}
    assert plan_from_probe(_fake_report({"bf16": 1.04}), min_speedup=1.0) == {"layer": "bf16"}
    assert plan_from_probe(_fake_report({"bf16": 1.2, "int8_rowwise": 1.6, "fp16": 1.1})) == {
        "layer": "int8_rowwise"
    }
    # too wrong, however fast; emulated (no time) is never fast
    report = _fake_report(
        {"bf16": 1.2, "int8_rowwise": 1.6, "fp8_e4m3_rowwise": None}, errors={"int8_rowwise": 0.3}
    )
    assert plan_from_probe(report) == {"layer": "bf16"}
    assert plan_from_probe(report, threshold=0.5) == {"layer": "int8_rowwise"}
    assert plan_from_probe(report) == {"layer": report.layer("layer").choice}


# -- apply_plan ----------------------------------------------------------------------------------
def _heads() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict(
        {
            "body": nn.Sequential(nn.Linear(8, 16), nn.ReLU()),
            "heads": TaskHeads(16, ["click", "conv"], hidden=[8]),
        }
    )


def test_apply_plan_keeps_state_dict_keys_and_parameter_objects():
    model = _heads()
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built before: still steps the same tensors
    plan = uniform_plan(model, "bf16")
    logits = {f"heads.towers.{t}.1" for t in ("click", "conv")}
    assert set(plan) == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)} - logits
    kept = "heads.towers.click.0.layers.0"
    changed = apply_plan(model, {**plan, kept: "fp32"})
    assert kept not in changed and set(changed) == set(plan) - {kept}
    assert type(model.get_submodule(kept)) is nn.Linear  # fp32 entries stay plain
    assert all(type(model.get_submodule(n)) is nn.Linear for n in logits)
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    before = model["body"][0].weight.detach().clone()
    out = model["body"](torch.randn(4, 8)).sum()
    out.backward()
    optimizer.step()
    assert (
        not torch.equal(model["body"][0].weight, before)
        and model["body"][0].weight is params["body.0.weight"]
    )
    assert current_plan(model) == {n: "bf16" for n in changed}
    # applying again changes the format in place
    assert apply_plan(model, {"body.0": "int8_rowwise"}) == ["body.0"]
    assert model["body"][0].format == "int8_rowwise" and model["body"][0].weight is params["body.0.weight"]


def test_bad_plans_raise_naming_the_key_and_the_valid_ones_and_change_nothing():
    model = _heads()
    with pytest.raises(
        ValueError, match=r"'body\.7' is not a Linear of the model; Linears: body\.0, heads\.towers"
    ):
        apply_plan(model, {"body.0": "bf16", "body.7": "bf16"})
    with pytest.raises(ValueError, match=r"'body\.1' is not a Linear"):
        apply_plan(model, {"body.1": "bf16"})  # the ReLU
    with pytest.raises(
        ValueError, match=r"unknown format for 'body\.0' 'int4'; formats: fp32, bf16, fp16, int8_rowwise"
    ):
        apply_plan(model, {"heads.towers.click.0.layers.0": "bf16", "body.0": "int4"})
    with pytest.raises(ValueError, match="backwards: fp32, bf16"):
        apply_plan(model, {}, backward="fp8")
    with pytest.raises(ValueError, match="unknown format 'int4'"):
        uniform_plan(model, "int4")
    assert not any(isinstance(m, LowpLinear) for m in model.modules())


# -- config, trainer, model card -----------------------------------------------------------------
def test_dispatch_block_defaults_to_none_and_accepts_a_bare_plan():
    base = {"name": "fm", "role": "fm"}
    assert ModelConfig.model_validate(base).dispatch.kwargs() == {
        "plan": "none",
        "threshold": 0.2,
        "min_speedup": 1.05,
        "backward": "fp32",
    }
    assert ModelConfig.model_validate({**base, "dispatch": "bf16"}).dispatch.plan == "bf16"
    block = ModelConfig.model_validate(
        {**base, "dispatch": {"plan": "auto", "threshold": 0.1, "backward": "bf16"}}
    ).dispatch
    assert Dispatch(**block.kwargs()).auto and block.backward == "bf16"
    with pytest.raises(ValidationError, match="plan is none, auto or a format"):
        ModelConfig.model_validate({**base, "dispatch": "int4"})
    with pytest.raises(ValidationError, match="accepted keys: plan, threshold, min_speedup, backward"):
        ModelConfig.model_validate({**base, "dispatch": {"plna": "bf16"}})


def test_a_model_trained_before_the_option_is_not_retrained_for_it(tmp_path):
    from fxrec.jobs.train import _same_config
    from fxrec.run import ModelDir

    card = _tiny_fm().model_dump(mode="json")
    del card["dispatch"]  # as written before `dispatch` existed
    model_dir = ModelDir(tmp_path / "fm")
    model_dir.root.mkdir()
    model_dir.card.write_text(yaml.safe_dump({"config": card}))
    assert _same_config(model_dir, _tiny_fm())
    assert not _same_config(model_dir, _tiny_fm("bf16"))


def _tiny_fm(dispatch=None) -> FMConfig:
    raw = dict(
        name="fm",
        embedding_dim=8,
        dense_layers=[16],
        interaction={"name": "dcnv2", "num_layers": 1, "low_rank": 8},
        heads={"hidden": [16]},
    )
    return FMConfig(**raw, **({"dispatch": dispatch} if dispatch is not None else {}))


def _train(tmp_path, small_log, dispatch):
    from fxrec.jobs.train import prepare_events, train_model

    config = RunConfig(
        name="tiny",
        simulator=None,
        events=str(small_log.path),
        fm=_tiny_fm(dispatch),
        train={"batch_size": 256, "checkpoint_every": 1000, "snapshots": "none", "probe": False},
    )
    run = tmp_path / "run"
    log = prepare_events(config, run)
    return run, train_model(config.fm, config, run, log, quiet=True)


def test_a_model_trained_with_a_format_plan_loads_with_it(tmp_path, small_log):
    from fxrec.factory import load_model

    _, model_dir = _train(tmp_path, small_log, {"plan": "bf16"})
    card = yaml.safe_load(model_dir.card.read_text())
    model, config, _ = load_model(model_dir)
    assert config.dispatch.plan == "bf16"
    assert card["dispatch_plan"] == uniform_plan(model, "bf16") and card["dispatch_plan"]
    assert current_plan(model) == card["dispatch_plan"]
    assert all(isinstance(model.get_submodule(n), LowpLinear) for n in card["dispatch_plan"])
    assert not any(isinstance(m, LowpLinear) for m in model.heads.output_layers().values())


def test_dispatch_none_trains_and_loads_plain_linears_and_write_plan_adds_one(tmp_path, small_log):
    from fxrec.factory import load_model
    from fxrec.jobs.probe import probe_model, write_plan

    run, model_dir = _train(tmp_path, small_log, None)
    assert "dispatch_plan" not in yaml.safe_load(model_dir.card.read_text())
    model, _, _ = load_model(model_dir)
    assert not any(isinstance(m, LowpLinear) for m in model.modules())
    # `fxrec probe --write-plan`: the probe's plan goes into the trained model's card
    probed = probe_model(run, "fm", events=512, samples=64, repeats=1)
    plan = write_plan(run, probed)
    assert set(plan) == set(dispatchable(model))
    for name, format in plan.items():
        if format != "fp32":
            assert probed.report.layer(name).result(format).error <= 0.2
    again, _, _ = load_model(model_dir)
    assert yaml.safe_load(model_dir.card.read_text())["dispatch_plan"] == plan
    assert current_plan(again) == {n: f for n, f in plan.items() if f != "fp32"}
    # the same from the command line
    from typer.testing import CliRunner

    from fxrec.cli import app

    result = CliRunner().invoke(app, ["probe", "--run", str(run), "--model", "fm", "--write-plan"])
    assert result.exit_code == 0, result.output
    assert "dispatch plan for fm" in result.output
    assert set(yaml.safe_load(model_dir.card.read_text())["dispatch_plan"]) == set(plan)


def test_auto_probes_the_first_day_and_keeps_the_plan_in_the_checkpoint(tmp_path, small_log):
    import json

    from fxrec.factory import build_model
    from fxrec.train.trainer import Trainer

    torch.manual_seed(0)
    model = build_model(_tiny_fm(), small_log.spec)
    dispatch = Dispatch(plan="auto", min_speedup=0.0)  # every safe candidate counts as fast: a plan is made
    trainer = Trainer(
        model, TrainConfig(batch_size=256, snapshots="none"), tmp_path, progress=False, dispatch=dispatch
    )
    trainer.fit(small_log)
    probe = json.loads(trainer.model_dir.dispatch_probe_json.read_text())
    assert probe["day"] == small_log.days[0]
    plan = trainer.dispatch_plan
    assert plan and set(plan) <= set(dispatchable(model))
    for layer in probe["layers"]:
        chosen = plan.get(layer["name"], "fp32")
        if chosen != "fp32":
            assert next(r for r in layer["results"] if r["format"] == chosen)["error"] <= 0.2
    # a fresh trainer resumes with the checkpoint's plan, without probing again
    torch.manual_seed(0)
    fresh = build_model(_tiny_fm(), small_log.spec)
    resumed = Trainer(
        fresh, TrainConfig(batch_size=256, snapshots="none"), tmp_path, progress=False, dispatch=dispatch
    )
    resumed._restore()
    assert resumed.planned and current_plan(fresh) == plan


# -- CUDA ----------------------------------------------------------------------------------------
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: torchao's float8 training recipes run on CUDA only"
)
def test_torchao_float8_linear_is_a_candidate_on_cuda():
    float8 = pytest.importorskip(
        "torchao.float8", reason="torchao is not installed (not an fxrec dependency)"
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256)).cuda()
    ref = nn.Sequential(nn.Linear(256, 256)).cuda()
    ref.load_state_dict(model.state_dict())
    config = float8.Float8LinearConfig.from_recipe_name("rowwise")
    float8.convert_to_float8_training(model, config=config)
    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, y_ref = model(x), ref(x)
    from fxrec.lowp.error import relative_error

    assert relative_error(y.float(), y_ref.float()) < 0.2


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: fp8 GEMM kernels (torch._scaled_mm) need one"
)
@pytest.mark.parametrize("format", ["fp8_e4m3_rowwise", "fp8_e4m3_tensorwise", "bf16"])
def test_lowp_linear_runs_on_cuda(format):
    plain, twin = _pair(64, 32)
    plain, lowp = plain.cuda(), LowpLinear.from_linear(twin.cuda(), format)
    x = torch.randn(64, 64, device="cuda", requires_grad=True)
    y = lowp(x)
    y.sum().backward()
    expected = FORMATS[format].emulate(x.detach(), plain.weight.detach()) + plain.bias.detach()
    torch.testing.assert_close(y, expected, rtol=2**-7, atol=1e-2)
    assert x.grad is not None and torch.isfinite(x.grad).all()
