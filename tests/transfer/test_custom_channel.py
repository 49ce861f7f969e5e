"""A channel defined only here trains a VM and is served through the real serving path, with no
edit under fxrec/serving/: the channel declares its input, its serving source and its as-of rule.

`LastCodeChannel` feeds the VM the FM's LoopFM code of the user's most recent published event strictly
before the event (within a retention window) -- one token, or a learned "missing" token."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from torch import nn

from fxrec.data.batches import Batch, EventFrame
from fxrec.data.inputs import JaggedInput
from fxrec.transfer.base import TransferChannel, or_missing
from fxrec.transfer.loopfm import dequantize_int4
from fxrec.transfer.registry import register_channel
from fxrec.transfer.serving import Needs, Served, ServingRequest, Source


class LastCodeChannel(TransferChannel):
    name = "last_code"
    num_tokens = 1
    published_output = "loopfm"  # input_dim: the published code width

    def __init__(self, dim: int, tasks: list[str], input_dim: int, retention_days: float = 1.0):
        super().__init__(dim, tasks)
        self.retention_days = retention_days
        self.project = nn.Linear(input_dim, dim)
        self.missing = nn.Parameter(torch.zeros(dim))
        self.seen: list[JaggedInput] = []  # what the channel was fed when not training (for the test)

    def attach(self, frame: EventFrame, published) -> None:
        offsets, codes, _ = published.view(frame).loopfm_sequences(1, self.retention_days)
        frame.inputs[self.input_key] = JaggedInput(offsets, codes)

    def serving_needs(self) -> Needs:
        return Needs(loopfm_log=1)

    def serve(self, request: ServingRequest) -> Served:
        log = request.sources.loopfm_log
        code = log.sequence(request.user_id, request.ts, 1, self.retention_days, self.project.in_features)
        source = Source.stale if len(code) else Source.missing
        return Served.shared(JaggedInput.repeat(code, request.size), source, request.size)

    def tokens(self, batch: Batch, tokens: torch.Tensor) -> torch.Tensor:
        codes: JaggedInput = batch.inputs[self.input_key]
        if not self.training:
            self.seen.append(codes)
        lengths = codes.lengths
        values = torch.tanh(self.project(dequantize_int4(codes.values)))
        token = torch.segment_reduce(values, "sum", lengths=lengths, unsafe=True, initial=0.0)
        return or_missing(token, (lengths > 0).float(), self.missing).unsqueeze(1)


register_channel(LastCodeChannel)


@pytest.fixture(scope="module")
def custom_run(published_run, transfer_config, small_log, tmp_path_factory):
    """The transfer run (FM trained and published) plus a VM with the channel, trained."""
    from fxrec.jobs.train import train_model

    run = tmp_path_factory.mktemp("custom") / "run"
    shutil.copytree(published_run, run)
    from fxrec.config import VMConfig

    vm = VMConfig.model_validate(
        {**transfer_config.vms[0].model_dump(), "name": "vm_last_code", "channels": [{"name": "last_code", "retention_days": 1.0}]}
    )
    config = transfer_config.model_copy(update={"vms": [vm]})
    (run / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    train_model(vm, config, run, small_log, quiet=True)
    return run


def _service(run, tmp_path, **config):
    from fxrec.serving.service import Service, ServingConfig

    config.setdefault("cache", f"lmdb://{tmp_path / 'solaris'}")
    config.setdefault("store", f"lmdb://{tmp_path / 'store'}")
    return Service(run, "vm_last_code", ServingConfig(**config))


def _request(event: dict, ts: int) -> dict:
    """A request for the event's user and item at `ts`; its context is unknown (null)."""
    return {
        "user_id": int(event["user_id"]),
        "ts": int(ts),
        "context": {"hour": None, "position": None},
        "candidates": [{"item_id": int(event["item_id"])}],
    }


def _attached_last_day(run, small_log, channel) -> tuple[EventFrame, JaggedInput]:
    """The channel's input as training attached it, for the last day's feed events."""
    from fxrec.data.reader import iter_frames
    from fxrec.run import Run
    from fxrec.transfer.published import PublishedFM

    published = PublishedFM(Run(run).publish_dir("fm", 0), loopfm_length=1)
    features = [small_log.spec.feature("item_id")]
    frame = None
    for _, frame in iter_frames(small_log, features, surfaces=["feed"]):
        channel.attach(frame, published)
    assert frame is not None
    return frame, frame.inputs[channel.input_key]


def test_a_registered_channel_trains_and_serves_what_training_attached(custom_run, small_log, tmp_path):
    from fxrec.serving.app import create_app

    service = _service(custom_run, tmp_path, mode="vm")
    (channel,) = service.vm.model.channels
    assert isinstance(channel, LastCodeChannel)
    # The service opened what the channel needs and nothing else.
    assert service.sources.loopfm_log is not None
    assert service.user_store is None and service.pair_store is None

    frame, attached = _attached_last_day(custom_run, small_log, channel)
    users, items, ts = (frame.meta[k].numpy() for k in ("user_id", "item_id", "ts"))
    lengths = attached.lengths.numpy()
    rows = np.r_[np.flatnonzero(lengths > 0)[:6], np.flatnonzero(lengths == 0)[:3]]
    assert (lengths[rows] > 0).sum() >= 5 and (lengths[rows] == 0).sum() >= 1
    with TestClient(create_app(service)) as client:
        for row in rows:
            event = {"user_id": users[row], "item_id": items[row]}
            response = client.post("/v1/score", json=_request(event, ts[row]))
            assert response.status_code == 200, response.text
            body = response.json()
            served = channel.seen[-1]
            np.testing.assert_array_equal(served.row(0).numpy(), attached.row(row).numpy())
            expected_source = "stale" if lengths[row] else "missing"
            assert body["candidates"][0]["sources"] == {"last_code": expected_source}
            assert body["sources"] == {"last_code": {expected_source: 1}}
            assert np.isfinite(body["candidates"][0]["scores"]["click"])


def test_a_request_at_ts_sees_no_output_written_at_or_after_ts(custom_run, small_log, tmp_path):
    """A user's published events e1 < e2 (e2 - e1 within retention): a request at e2's ts gets e1's
    code, one second later e2's. A `<=` in the as-of rule would serve e2 to the first request."""
    from fxrec.run import Run
    from fxrec.serving.app import create_app

    published = pl.concat(
        [
            pl.read_parquet(p, columns=["user_id", "ts", "loopfm"])
            for p in Run(custom_run).publish_dir("fm", 0).glob("day=*.parquet")
        ]
    ).sort("user_id", "ts", maintain_order=True)
    pairs = (
        published.with_columns(
            before_previous_ts=pl.col("ts").shift(2).over("user_id"),
            previous_ts=pl.col("ts").shift(1).over("user_id"),
            previous_code=pl.col("loopfm").shift(1).over("user_id"),
            next_ts=pl.col("ts").shift(-1).over("user_id"),
        )
        .filter(
            (pl.col("previous_ts") < pl.col("ts"))
            & (
                pl.col("before_previous_ts").is_null()
                | (pl.col("before_previous_ts") < pl.col("previous_ts"))
            )
            & (pl.col("ts") - pl.col("previous_ts") < 86_400)
            & (pl.col("next_ts").is_null() | (pl.col("next_ts") > pl.col("ts") + 1))
        )
        .head(3)
    )
    assert pairs.height >= 1
    service = _service(custom_run, tmp_path, mode="vm")
    (channel,) = service.vm.model.channels
    item = int(small_log.read_day(small_log.days[-1]).column("item_id")[0].as_py())
    with TestClient(create_app(service)) as client:
        for pair in pairs.iter_rows(named=True):
            event = {"user_id": pair["user_id"], "item_id": item}
            for ts, code in ((pair["ts"], pair["previous_code"]), (pair["ts"] + 1, pair["loopfm"])):
                response = client.post("/v1/score", json=_request(event, ts))
                assert response.status_code == 200, response.text
                np.testing.assert_array_equal(channel.seen[-1].row(0).numpy(), np.array([code], np.int8))


def test_a_channel_with_tokens_but_no_serving_side_is_refused():
    from fxrec.serving.models import RunError, check_servable

    class TrainingOnlyInput(TransferChannel):
        name = "training_only_input"
        num_tokens = 1

    model = SimpleNamespace(name="vm", model=SimpleNamespace(channels=[TrainingOnlyInput(8, ["click"])]))
    with pytest.raises(RunError, match="training_only_input"):
        check_servable(model)
    model.model.channels = [LastCodeChannel(8, ["click"], input_dim=4)]
    check_servable(model)


def test_register_channel_refuses_a_taken_name():
    class Impostor(LastCodeChannel):
        name = "sum"

    register_channel(LastCodeChannel)  # the same class again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_channel(Impostor)
