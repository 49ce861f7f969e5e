"""Shared fixtures: a small simulated ads log, built once per test session."""

from __future__ import annotations

import os

# Triton reads this once, when torch first imports it: the Triton kernels run on the CPU interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_world_config():
    from fxrec.data.simulator import SimulatorConfig

    return SimulatorConfig(
        days=4, impressions_per_day=3000, users=800, new_users_per_day=50, advertisers=20, ads=150, new_ads_per_day=10, history_length=5
    )


@pytest.fixture(scope="session")
def small_log(tmp_path_factory, small_world_config):
    from fxrec.data.eventlog import EventLog
    from fxrec.data.simulator import simulate_to

    path = tmp_path_factory.mktemp("world") / "events"
    simulate_to(small_world_config, path, progress=False)
    return EventLog(path)


@pytest.fixture(scope="session")
def tiny_fm_config():
    """A tiny FM with a SUM user tower and target attention: everything `fxrec publish` can write."""
    from fxrec.config import FMConfig

    user_features = ["user_id", "country", "age_bucket", "device", "user_segments", "user_past_impressions", "hist_item_id"]
    return FMConfig(
        name="fm",
        role="fm",
        embedding_dim=8,
        dense_layers=[16],
        interaction={"name": "dcnv2", "num_layers": 1, "low_rank": 8},
        heads={"hidden": [16]},
        user_tower={"features": user_features, "dim": 12, "hidden": [16]},
        target_attention={"query": ["item_id"], "heads": 2},
    )


@pytest.fixture(scope="session")
def tiny_vm_args():
    """Constructor arguments of a tiny VM on the feed surface (add `name=`, `channels=`)."""
    return dict(
        role="vm", surfaces=["feed"], embedding_dim=8, dense_layers=[8],
        interaction={"name": "dcnv2", "num_layers": 1, "low_rank": 4}, heads={"hidden": [8]},
    )
