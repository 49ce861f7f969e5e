"""Publishing: FM outputs per event come from a snapshot trained strictly before the event's day."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import yaml

from fxrec.errors import InputError
from fxrec.run import Run


def _published(run, delay: int = 0) -> pl.DataFrame:
    directory = Run(run).publish_dir("fm", delay)
    return pl.concat([pl.read_parquet(p).with_columns(day=pl.lit(p.stem[4:])) for p in sorted(directory.glob("day=*.parquet"))])


def _day_of(ts: np.ndarray) -> np.ndarray:
    return np.array([dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y%m%d") for t in ts]).astype(np.int64)


@pytest.mark.parametrize("delay", [0, 1])
def test_every_fm_output_comes_from_a_snapshot_trained_before_the_event(published_run, small_log, delay):
    frame = _published(published_run, delay)
    event_day = _day_of(frame["ts"].to_numpy())
    version = frame["fm_version"].to_numpy()
    assert np.all(version < event_day)
    # exactly 1 + delay log days before: the freshest snapshot that staleness allows
    days = [int(d.replace("-", "")) for d in small_log.days]
    position = {d: i for i, d in enumerate(days)}
    gap = np.array([position[e] - position[v] for e, v in zip(event_day, version, strict=True)])
    assert np.all(gap == 1 + delay)


def test_published_logits_match_the_fms_progressive_predictions(published_run):
    """Delay 0 is what the FM predicted online: the same snapshot on the same events."""
    frame = _published(published_run, 0)
    predictions = pl.concat([pl.read_parquet(p) for p in sorted(Run(published_run).model("fm").predictions.glob("*.parquet"))])
    joined = frame.join(predictions, on="event_id", how="inner")
    assert joined.height == frame.height > 0
    probs = 1 / (1 + np.exp(-joined["logit_click"].to_numpy()))
    np.testing.assert_allclose(probs, joined["pred_click"].to_numpy(), atol=1e-5)


def test_publish_writes_widths_codes_and_the_store(published_run):
    directory = Run(published_run).publish_dir("fm", 0)
    meta = yaml.safe_load((directory / "publish.yaml").read_text())
    assert meta["dims"] == {"user": 12, "tae": 8, "loopfm": 8}
    frame = _published(published_run, 0)
    codes = np.stack(frame["loopfm"].to_list())
    assert codes.min() >= -8 and codes.max() <= 7  # int4
    assert len(np.unique(codes)) > 4  # the codes carry information
    from fxrec.store import open_store

    store = open_store(f"lmdb://{Run(published_run).user_store('fm')}", dim=12, namespace="user")
    users = frame["user_id"].unique().to_numpy()
    read = store.get(users, now=int(frame["ts"].max()))
    assert read.found.all()
    last = frame.sort("ts").group_by("user_id").agg(pl.col("user").last(), pl.col("fm_version").last())
    expected = dict(zip(last["user_id"].to_list(), last["user"].to_list(), strict=True))
    np.testing.assert_allclose(read.vectors, np.array([expected[u] for u in users]), atol=1e-5)
    store.close()


def test_publish_fails_clearly_without_snapshots(tmp_path, transfer_config):
    from fxrec.jobs.publish import publish

    config = transfer_config.model_copy(deep=True)
    with pytest.raises(InputError, match="snapshots of .*the FM is not trained"):
        publish(tmp_path, config, progress=False)


@pytest.mark.slow
def test_published_conversion_logits_come_from_snapshots_that_never_saw_a_later_conversion(
    tmp_path, transfer_config, small_log, monkeypatch
):
    """Day t+1's published conversion logits come from the snapshot trained through day t, and every
    conversion that snapshot's training read had happened before the end of day t."""
    from fxrec.jobs.publish import publish
    from fxrec.jobs.train import train_model
    from fxrec.train import trainer as trainer_module

    raw = pl.from_arrow(small_log.read_all(["event_id", "ts", "conversion", "conversion_delay_s"]))
    conversion_time = dict(zip(raw["event_id"].to_list(), (raw["ts"] + raw["conversion_delay_s"].cast(pl.Float64)).to_list(), strict=True))
    trained: list[float] = []  # conversion time of every positive conversion label a training step read
    seen_by_snapshot: dict[int, float] = {}  # version -> latest conversion its training read
    train_step, save_atomic = trainer_module.Trainer.train_step, trainer_module.save_atomic

    def spy_step(self, batch):
        positive = batch.meta["event_id"][batch.labels["conversion"] > 0].tolist()
        trained.extend(conversion_time[e] for e in positive)
        return train_step(self, batch)

    def spy_save(state, path):
        if path.parent.name == "snapshots":
            seen_by_snapshot[int(path.stem.removeprefix("day=").replace("-", ""))] = max(trained, default=-np.inf)
        return save_atomic(state, path)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", spy_step)
    monkeypatch.setattr(trainer_module, "save_atomic", spy_save)
    light = transfer_config.fm.model_copy(update={"features": ["item_id", "advertiser_id", "hour", "bid"], "user_tower": None, "target_attention": None})
    config = transfer_config.model_copy(update={"fm": light, "publish": transfer_config.publish.model_copy(update={"store": False, "autoencoder_epochs": 1})})
    run = tmp_path / "run"
    train_model(light, config, run, small_log, quiet=True)
    frame = _published(publish(run, config, delay=0, progress=False).parent.parent, 0)

    assert "logit_conversion" in frame.columns
    versions = set(frame["fm_version"].to_list())
    assert versions == {int(d.replace("-", "")) for d in small_log.days[:-1]}
    for version in versions:
        end_of_day = (dt.datetime.strptime(str(version), "%Y%m%d").replace(tzinfo=dt.UTC) + dt.timedelta(days=1)).timestamp()
        assert seen_by_snapshot[version] < end_of_day, f"snapshot {version} learned a conversion from after its day"
    assert np.all(frame["fm_version"].to_numpy() < _day_of(frame["ts"].to_numpy()))
    last_day_start = dt.datetime.fromisoformat(small_log.days[-1]).replace(tzinfo=dt.UTC).timestamp()
    matured = raw.filter((pl.col("conversion") > 0) & (pl.col("ts") < last_day_start)).height
    assert 0 < len(trained) < matured, "no conversion of a trained day was held back: the test proves nothing"
