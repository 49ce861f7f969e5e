"""Channels: each trains a VM end to end; the pieces behave as the papers define them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from fxrec.data.inputs import LogitInput
from fxrec.transfer.exfm import StudentAdapter, scale_gradient
from fxrec.transfer.loopfm import MatryoshkaAutoencoder, dequantize_int4, quantize_int4
from fxrec.transfer.ratio import paired_sign_flip_test, transfer_ratio

CHANNEL_SETS = {
    "kd": ["kd"],
    "exfm": [{"name": "exfm", "beta": 3.0, "alpha": 2.0, "adapter": True}],
    "sum": [{"name": "sum", "stabilize_k": 2}],
    "loopfm_kd": [{"name": "loopfm", "encoder": "attention", "max_len": 5}, "kd"],
    "loopfm_mean": [{"name": "loopfm", "encoder": "mean"}],
    "tae": ["tae"],
}


@pytest.mark.parametrize("name", list(CHANNEL_SETS))
def test_a_vm_trains_with_each_channel(published_run, transfer_config, small_log, name):
    from fxrec.config import VMConfig
    from fxrec.jobs.train import train_model

    vm = VMConfig.model_validate({**transfer_config.vms[0].model_dump(), "name": f"vm_{name}", "channels": CHANNEL_SETS[name]})
    model_dir = train_model(vm, transfer_config, published_run, small_log, quiet=True)
    predictions = pl.concat([pl.read_parquet(p) for p in sorted(model_dir.predictions.glob("*.parquet"))])
    assert predictions.height > 0 and np.isfinite(predictions["pred_click"].to_numpy()).all()

    from fxrec.factory import load_model

    model, config, _ = load_model(model_dir)
    assert [c.name for c in model.channels] == [c if isinstance(c, str) else c["name"] for c in CHANNEL_SETS[name]]
    _assert_joins_find_the_published_outputs(model, published_run, small_log)


def _assert_joins_find_the_published_outputs(model, published_run, small_log) -> None:
    """Walk the VM's frames as the trainer does and attach every channel: the FM published every event
    of days 1..3, so per-event joins must find (nearly) all of them with the published values, and the
    as-of joins (user embedding, LoopFM history) must find a good share. A join that silently finds
    nothing would still train a VM (on zeros and "missing" tokens)."""
    from fxrec.data.reader import iter_frames
    from fxrec.run import Run
    from fxrec.transfer.published import PublishedFM

    directory = Run(published_run).publish_dir("fm", 0)
    published = pl.concat([pl.read_parquet(p) for p in sorted(directory.glob("day=*.parquet"))])
    order = np.argsort(published["event_id"].to_numpy())
    published_ids = published["event_id"].to_numpy()[order]
    reader = PublishedFM(directory)
    found: dict[str, list[np.ndarray]] = {}
    features = [small_log.spec.feature(n) for n in model.features]
    for day, frame in iter_frames(small_log, features, surfaces=["feed"]):
        for channel in model.channels:
            channel.attach(frame, reader)
        if day == small_log.days[0]:
            continue  # no FM snapshot before the first day: nothing published
        rows = order[np.searchsorted(published_ids, frame.meta["event_id"].numpy())]
        for key in ("fm_logits", "tae", "sum"):
            if key in frame.inputs:
                found.setdefault(key, []).append(frame.inputs[key].found.numpy())
        if "fm_logits" in frame.inputs:
            expected = published["logit_click"].to_numpy()[rows]
            np.testing.assert_array_equal(frame.inputs["fm_logits"].logits["click"].numpy(), expected)
        if "tae" in frame.inputs:
            expected = np.stack(published["tae"].to_numpy()[rows])
            np.testing.assert_array_equal(frame.inputs["tae"].values.numpy(), expected)
        if "loopfm" in frame.inputs:
            lengths = frame.inputs["loopfm"].lengths.numpy()
            found.setdefault("loopfm", []).append((lengths > 0).astype(np.float32))
    assert found, "no channel joined anything"
    bounds = {"fm_logits": 0.99, "tae": 0.99, "sum": 0.8, "loopfm": 0.8}  # as-of: ~0.9 here
    for key, flags in found.items():
        fraction = float(np.concatenate(flags).mean())
        assert fraction > bounds[key], f"{key}: joined {fraction:.2f} of the published days' events"


def test_gradient_scaling_is_identity_forward_and_beta_backward():
    x = torch.randn(4, 3, requires_grad=True)
    y = scale_gradient(x, 5.0)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 5.0))


def _bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row BCE with soft targets, written out: -(t log p + (1 - t) log(1 - p))."""
    p = torch.sigmoid(logits)
    return -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))


def test_exfm_loss_distils_the_scaled_clipped_fm_probability():
    """ExFM's auxiliary loss: w * mean over found rows of BCE(y_aux, min(alpha * sigmoid(y_fm), 1)),
    with the trunk gradient multiplied by beta and the loss value unchanged by it."""
    from fxrec.transfer.exfm import ExFM

    torch.manual_seed(0)
    fm_logits = torch.tensor([-3.0, -1.2, 0.5, 2.0, -2.2, 0.0])  # alpha * p: 0.19, 0.93, 2.5, 3.5, 0.39, 2.0
    found = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    batch = SimpleNamespace(inputs={"fm_logits": LogitInput({"click": fm_logits}, found)})
    top = torch.randn(6, 16)
    grads, losses = [], []
    for beta in (1.0, 3.0):
        torch.manual_seed(1)  # the same auxiliary head both times
        channel = ExFM(8, ["click"], weight=2.5, beta=beta, alpha=4.0)
        channel.build(16)
        trunk = top.clone().requires_grad_(True)
        loss = channel.loss(SimpleNamespace(representations={"top": trunk}), batch)
        loss.backward()
        grads.append(trunk.grad)
        losses.append(loss)
        with torch.no_grad():
            aux = channel.aux_head(top)["click"]
        target = torch.minimum(4.0 * torch.sigmoid(fm_logits), torch.ones(6))
        assert target[2:4].eq(1.0).all() and target[0] < 1  # the clip is reached on some rows, not all
        expected = 2.5 * (_bce(aux, target) * found).sum() / found.sum()
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(grads[1], 3.0 * grads[0])
    assert grads[0].abs().sum() > 0 and grads[0][4].abs().sum() == 0  # the row without FM output adds nothing


def test_student_adapter_learns_a_stale_fms_shift():
    """An FM whose logits are off by +1.5 (stale): the adapter, trained on fresh labels, undoes it."""
    torch.manual_seed(0)
    true_logits = torch.randn(20_000) - 2
    labels = torch.bernoulli(torch.sigmoid(true_logits))
    adapter = StudentAdapter(["click"])
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(adapter("click", true_logits + 1.5), labels)
        loss.backward()
        optimizer.step()
    adapted = torch.sigmoid(adapter("click", true_logits + 1.5)).mean()
    assert abs(float(adapted) - float(labels.mean())) < 0.01
    assert float(torch.sigmoid(true_logits + 1.5).mean()) - float(labels.mean()) > 0.1


def test_int4_codes_round_trip_within_half_a_step():
    z = torch.rand(1000, 8) * 2 - 1
    codes = quantize_int4(z)
    assert codes.dtype == torch.int8 and codes.min() >= -8 and codes.max() <= 7
    error = (dequantize_int4(codes) - z).abs()
    assert float(error[z < 7 / 8].max()) <= 1 / 16 + 1e-6


def test_matryoshka_prefixes_reconstruct_better_as_they_grow():
    torch.manual_seed(0)
    basis = torch.randn(6, 32)
    e = torch.randn(4000, 6) @ basis + 0.05 * torch.randn(4000, 32)
    autoencoder = MatryoshkaAutoencoder(32, code_dim=8, hidden=64, prefixes=[2, 4, 8])
    autoencoder.fit(e, epochs=30)
    x = (e - autoencoder.mean) / autoencoder.std
    with torch.no_grad():
        z = autoencoder.encode(e)
        errors = []
        for prefix in (2, 4, 8):
            masked = torch.cat([z[:, :prefix], torch.zeros_like(z[:, prefix:])], 1)
            errors.append(float(((autoencoder.decoder(masked) - x) ** 2).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.3  # most of the variance survives an 8-wide code


def test_transfer_ratio_and_paired_test():
    assert transfer_ratio(0.90, 0.88, 0.86) == pytest.approx(0.5)
    assert np.isnan(transfer_ratio(0.85, 0.84, 0.86))  # FM no better: undefined, not a number to brag about
    rng = np.random.default_rng(0)
    assert paired_sign_flip_test(rng.normal(0.5, 0.1, 12)) < 0.01
    assert paired_sign_flip_test(rng.normal(0.0, 0.1, 12)) > 0.05


def test_a_channel_without_its_published_output_is_a_clear_error(small_log):
    from fxrec.config import VMConfig
    from fxrec.factory import build_model

    with pytest.raises(ValueError, match="publish"):
        build_model(VMConfig(name="vm", role="vm", channels=["sum"]), small_log.spec, fm_dims={"tae": 8})
    with pytest.raises(ValueError, match="unknown transfer channel"):
        build_model(VMConfig(name="vm", role="vm", channels=["telepathy"]), small_log.spec)
