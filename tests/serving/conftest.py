"""A tiny served run: an FM with a SUM user tower and target attention, published; two VMs on feed,
one plain and one with every servable channel: KD (training only), the FM's user embedding (SUM),
its LoopFM representation history and target-aware embeddings (TAE)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def serving_config(small_log, tiny_fm_config, tiny_vm_args):
    from fxrec.config import RunConfig, VMConfig

    fm, vm = tiny_fm_config, tiny_vm_args
    return RunConfig(
        name="serving",
        simulator=None,
        events=str(small_log.path),
        fm=fm,
        vms=[
            VMConfig(name="vm_plain", **vm),
            VMConfig(name="vm_transfer", channels=["kd", "sum", "loopfm", "tae"], **vm),
        ],
        train={"batch_size": 256, "report_days": 2, "checkpoint_every": 1000},
        publish={"delays": [0], "code_dim": 8, "store": True},
    )


@pytest.fixture(scope="session")
def served_run(trained_run, serving_config, small_log):
    """runs/<tmp>/ with config.yaml, the FM (published) and both VMs trained."""
    return trained_run("serving", serving_config, small_log)


@pytest.fixture(scope="session")
def catalog(served_run, small_log):
    from fxrec.serving.catalog import FeatureCatalog

    return FeatureCatalog.from_log(small_log)
