"""The probe: hooks come and go, errors rank formats sensibly, outliers are flagged, fxrec models probe whole."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fxrec.lowp import Probe

FAST = dict(samples=128, repeats=1)  # cheap timing: tests never assert on it


def _feed(model: nn.Module, batches: int, make) -> None:
    with torch.no_grad():
        for _ in range(batches):
            model(make())


def test_hooks_collect_then_detach_removes_every_one():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    probe = Probe(model).attach()
    assert all(len(m._forward_pre_hooks) == 1 for m in (model[0], model[2]))
    _feed(model, 3, lambda: torch.randn(5, 6))
    assert [probe.moments[name].count for name in ("0", "2")] == [15, 15]
    probe.detach()
    assert not probe.attached
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())
    _feed(model, 2, lambda: torch.randn(5, 6))
    assert probe.moments["0"].count == 15
    with probe:  # the context manager attaches and detaches again
        _feed(model, 1, lambda: torch.randn(2, 6))
    assert probe.moments["0"].count == 17 and not probe.attached


def test_every_nth_call_and_token_shaped_inputs():
    layer = nn.Sequential(nn.Linear(8, 2))
    with Probe(layer, every=2) as probe:
        _feed(layer, 4, lambda: torch.randn(3, 5, 8))  # (B, n, F): 15 rows a call, calls 0 and 2 kept
    assert probe.moments["0"].count == 30


def test_fp32_is_exact_and_the_report_is_complete():
    model = nn.Sequential(nn.Linear(16, 8))
    with Probe(model) as probe:
        _feed(model, 2, lambda: torch.randn(32, 16))
    report = probe.report(formats=["bf16", "int8_rowwise"], **FAST)
    layer = report.layer("0")
    assert [r.format for r in layer.results] == ["fp32", "bf16", "int8_rowwise"]
    fp32 = layer.result("fp32")
    assert fp32.error == 0.0 and fp32.safe and fp32.speedup == pytest.approx(1.0) and not fp32.fast
    assert (layer.in_features, layer.out_features, layer.rows_seen) == (16, 8, 64)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["layers"][0]["results"][1]["format"] == "bf16" and "choice" in data["layers"][0]
    table = report.to_table()
    assert "int8_rowwise" in table and "16 -> 8" in table


@pytest.mark.parametrize("seed", range(3))
def test_error_grows_as_mantissa_bits_shrink_on_a_well_conditioned_layer(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32))
    with Probe(model) as probe:
        _feed(model, 3, lambda: torch.randn(64, 64) + 0.5)
    layer = probe.report(seed=seed, **FAST).layer("0")
    err = {r.format: r.error for r in layer.results}
    for scaling in ("tensorwise", "rowwise"):
        assert err["bf16"] < err[f"fp8_e4m3_{scaling}"] < err[f"fp8_e5m2_{scaling}"]
    assert err["fp16"] < err["bf16"]  # 10 mantissa bits against 7


def test_an_outlier_feature_makes_int8_tensorwise_unsafe_where_bf16_is_safe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16))
    with torch.no_grad():
        model[0].weight[:, 0] *= 1e-3  # a huge feature with a small weight: typical learned outlier channel

    def batch() -> torch.Tensor:
        x = torch.randn(64, 32)
        x[:, 0] *= 1000.0
        return x

    with Probe(model) as probe:
        _feed(model, 4, batch)
    layer = probe.report(formats=["bf16", "int8_tensorwise"], threshold=0.2, **FAST).layer("0")
    assert layer.result("bf16").safe
    assert not layer.result("int8_tensorwise").safe
    assert layer.activation_absmax > 500


def test_a_ranking_model_lists_every_linear(small_log, tiny_fm_config):
    from fxrec.data.reader import iter_frames
    from fxrec.factory import build_model

    torch.manual_seed(0)
    model = build_model(tiny_fm_config, small_log.spec).eval()
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears
    _, frame = next(
        iter_frames(small_log, small_log.spec.select(tiny_fm_config.features, tiny_fm_config.role))
    )
    with Probe(model) as probe, torch.no_grad():
        model(frame.take(torch.arange(64)))
    report = probe.report(formats=["bf16", "int8_rowwise", "fp8_e4m3_rowwise"], samples=32, repeats=1)
    assert [layer.name for layer in report.layers] == linears
    ran = [layer for layer in report.layers if layer.rows_seen]
    assert ran and all(len(layer.results) == 4 for layer in ran)
    assert all(layer.results == [] for layer in report.layers if not layer.rows_seen)
    assert all(r.error == 0.0 for layer in ran for r in layer.results if r.format == "fp32")
