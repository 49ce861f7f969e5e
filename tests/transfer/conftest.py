"""A tiny run with an FM that has a user tower and target attention, trained and published once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def transfer_config(small_log, tiny_fm_config, tiny_vm_args):
    from fxrec.config import RunConfig, VMConfig

    fm, vm = tiny_fm_config, VMConfig(name="vm", **tiny_vm_args)
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
    from fxrec.jobs.publish import publish
    from fxrec.jobs.train import train_model

    run = tmp_path_factory.mktemp("transfer") / "run"
    run.mkdir()
    train_model(transfer_config.fm, transfer_config, run, small_log, quiet=True)
    for delay in (0, 1):
        publish(run, transfer_config, delay=delay, progress=False)
    return run
