"""A tiny run with an FM that has a user tower and target attention, trained and published once."""

from __future__ import annotations

import pytest

USER_FEATURES = ["user_id", "country", "age_bucket", "device", "user_segments", "user_activity", "hist_item_id"]


@pytest.fixture(scope="session")
def transfer_config(small_log):
    from fxrec.config import ModelConfig, RunConfig

    fm = ModelConfig(
        name="fm",
        role="fm",
        embedding_dim=8,
        dense_layers=[16],
        interaction={"name": "dcnv2", "num_layers": 1, "low_rank": 8},
        heads={"hidden": [16]},
        user_tower={"features": USER_FEATURES, "dim": 12, "hidden": [16]},
        target_attention={"query": ["item_id"], "heads": 2},
    )
    vm = ModelConfig(
        name="vm", role="vm", surfaces=["feed"], embedding_dim=8, dense_layers=[8],
        interaction={"name": "dcnv2", "num_layers": 1, "low_rank": 4}, heads={"hidden": [8]},
    )
    return RunConfig(
        name="tiny",
        simulator=None,
        events=str(small_log.path),
        fm=fm,
        vms=[vm],
        train={"batch_size": 256, "report_days": 2, "checkpoint_every": 1000},
        publish={"delays": [0, 1], "code_dim": 8, "store": True},
    )


@pytest.fixture(scope="session")
def published_run(tmp_path_factory, transfer_config, small_log):
    from fxrec.pipeline import train_model
    from fxrec.transfer.publish import publish

    run = tmp_path_factory.mktemp("transfer") / "run"
    run.mkdir()
    train_model(transfer_config.fm, transfer_config, run, small_log, quiet=True)
    for delay in (0, 1):
        publish(run, transfer_config, delay=delay, progress=False)
    return run
