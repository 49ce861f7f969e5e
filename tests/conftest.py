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


@pytest.fixture(scope="session")
def funnel_log(tmp_path_factory):
    """A tiny simulated log with a candidate log (every 30th request) and hide events."""
    from fxrec.data.eventlog import EventLog
    from fxrec.data.simulator import SimulatorConfig, simulate_to

    config = SimulatorConfig(
        seed=5, days=4, impressions_per_day=2500, users=500, new_users_per_day=30, advertisers=15, ads=120,
        new_ads_per_day=8, history_length=5, candidate_log_rate=0.03, quality_events=True,
    )
    path = tmp_path_factory.mktemp("funnel_world") / "events"
    simulate_to(config, path, progress=False)
    return EventLog(path)


@pytest.fixture(scope="session")
def funnel_config(funnel_log, tiny_fm_config, tiny_vm_args):
    """The tiny funnel run's config: the FM (SUM user tower, published), one feed VM with daily snapshots."""
    from fxrec.config import RunConfig, VMConfig

    return RunConfig(
        name="funnel",
        simulator=None,
        events=str(funnel_log.path),
        fm=tiny_fm_config.model_copy(update={"target_attention": None}),
        vms=[VMConfig(name="vm_feed", **tiny_vm_args)],
        train={"batch_size": 256, "report_days": 2, "checkpoint_every": 1000, "vm_snapshots": True, "probe": False},
        publish={"delays": [0], "code_dim": 8, "store": False},
        funnel={"retrieval_k": 40, "esr_k": 10, "final_k": 2, "eval_days": 2, "search": "exact",
                "neighbours": 10, "recall_ks": [5, 10, 20, 40, 80], "esr_epochs": 1},
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A builder of runs: `trained_run(name, config, log)` -> runs/<tmp>/ with config.yaml, the FM trained
    and published (delay 0) and every VM trained."""

    def build(name: str, config, log):
        from fxrec.jobs.publish import publish
        from fxrec.jobs.train import train_model
        from fxrec.run import Run

        run = tmp_path_factory.mktemp(name) / "run"
        run.mkdir()
        Run(run, config).write_config()
        train_model(config.fm, config, run, log, quiet=True)
        publish(run, config, delay=0, progress=False)
        for vm in config.vms:
            train_model(vm, config, run, log, quiet=True)
        return run

    return build


@pytest.fixture(scope="session")
def funnel_trained(trained_run, funnel_config, funnel_log):
    """runs/<tmp>/ with the FM trained and published and the VM trained: what `fxrec funnel` needs."""
    return trained_run("funnel", funnel_config, funnel_log)


@pytest.fixture(scope="session")
def funnel_ran(funnel_trained):
    """`fxrec funnel` on the tiny funnel run: (run, what funnel.json holds)."""
    from fxrec.jobs.funnel import run_funnel

    return funnel_trained, run_funnel(funnel_trained, progress=False, quiet=True)
