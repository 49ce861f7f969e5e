"""The FM's daily snapshots: kept while publishing needs them, pruned per `train.snapshots` once every
configured delay is published, and a publish that needs a pruned one fails before writing anything."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from fxrec.config import ExperimentConfig, RunConfig, TrainConfig, load_config
from fxrec.errors import InputError
from fxrec.jobs.snapshots import kept_days, needed_days, prune_snapshots, published_delays
from fxrec.run import Run
from fxrec.transfer.published import PUBLISH_META

DAYS = [f"2024-01-{d:02d}" for d in range(1, 15)]  # a 14-day log: days 1..13 are trained


def _train(snapshots: str, every: int = 7) -> TrainConfig:
    return TrainConfig(snapshots=snapshots, snapshot_every_days=every)


def test_keep_last_keeps_the_newest_and_all_keeps_every_day():
    trained = DAYS[:-1]
    assert kept_days(trained, DAYS, _train("keep_last")) == [DAYS[12]]
    assert kept_days(trained, DAYS, _train("all")) == trained
    assert kept_days([], DAYS, _train("keep_last")) == []


def test_every_k_days_keeps_the_last_day_of_each_block_of_k_log_days_and_the_newest():
    trained = DAYS[:-1]
    assert kept_days(trained, DAYS, _train("every_k_days", 7)) == [DAYS[6], DAYS[12]]
    assert kept_days(trained, DAYS, _train("every_k_days", 3)) == [
        DAYS[2],
        DAYS[5],
        DAYS[8],
        DAYS[11],
        DAYS[12],
    ]
    assert kept_days(trained, DAYS, _train("every_k_days", 1)) == trained
    # pruning again after the log grew keeps the same weekly days
    assert kept_days([DAYS[6], DAYS[12]], DAYS + ["2024-01-15"], _train("every_k_days", 7)) == [
        DAYS[6],
        DAYS[12],
    ]


def test_a_publish_reads_the_snapshots_of_the_days_before_each_event_day():
    assert needed_days(DAYS, 0) == DAYS[:-1]
    assert needed_days(DAYS, 2) == DAYS[:-3]
    assert needed_days(DAYS[:2], 5) == []


def test_the_runs_delays_are_publishs_and_the_experiments(transfer_config):
    assert published_delays(transfer_config) == [0, 1]
    experiment = ExperimentConfig(channel_sets={"none": []}, delays=[3])
    assert published_delays(transfer_config.model_copy(update={"experiment": experiment})) == [0, 1, 3]


def _fake_run(tmp_path, config: RunConfig, published: list[int]) -> Run:
    run = Run(tmp_path / "run", config)
    model = run.model(config.fm.name)
    model.snapshots.mkdir(parents=True)
    for day in DAYS[:-1]:
        model.snapshot(day).write_bytes(b"weights")
    for delay in published:
        run.publish_dir(config.fm.name, delay).mkdir(parents=True)
        (run.publish_dir(config.fm.name, delay) / PUBLISH_META).write_text("{}")
    return run


@pytest.mark.parametrize(
    ("policy", "kept"), [("keep_last", [12]), ("every_k_days", [6, 12]), ("all", list(range(13)))]
)
def test_pruning_waits_for_every_delay_then_keeps_what_the_policy_says(
    tmp_path, transfer_config, policy, kept
):
    config = transfer_config.model_copy(update={"train": _train(policy, 7)})
    run = _fake_run(tmp_path, config, published=[0])  # delay 1 is still to publish
    assert prune_snapshots(run, DAYS) == []
    assert run.model("fm").snapshot_days() == DAYS[:-1]
    (run.publish_dir("fm", 1)).mkdir(parents=True)
    (run.publish_dir("fm", 1) / PUBLISH_META).write_text("{}")
    prune_snapshots(run, DAYS)
    assert run.model("fm").snapshot_days() == [DAYS[i] for i in kept]


def test_an_old_config_with_keep_snapshots_is_told_the_new_key(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("fm: {name: fm, role: fm}\ntrain: {keep_snapshots: true}\n")
    with pytest.raises(InputError, match=r"keep_snapshots was replaced by `snapshots: .*`snapshots: all`"):
        load_config(path)
    path.write_text("fm: {name: fm, role: fm}\ntrain: {keep_snapshots: false}\n")
    with pytest.raises(InputError, match="write `snapshots: none`"):
        load_config(path)


# -- end to end: a tiny run trained and published with every snapshot, and with the newest only -----------


def _trained_and_published(root, config: RunConfig, small_log):
    from fxrec.jobs.publish import publish
    from fxrec.jobs.train import train_model

    Run(root, config).write_config()
    train_model(config.fm, config, root, small_log, quiet=True)
    for delay in config.publish.delays:
        publish(root, config, delay=delay, progress=False)
    for vm in config.vms:
        train_model(vm, config, root, small_log, quiet=True)
    return Run(root, config)


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory, transfer_config, small_log):
    """The same run twice, `snapshots: all` and `keep_last`, with a VM that reads the published FM."""
    from fxrec.config import VMConfig

    vm = VMConfig(
        name="vm_tae",
        channels=["kd", "tae"],
        **transfer_config.vms[0].model_dump(exclude={"name", "channels"}),
    )
    runs = {}
    for policy in ("all", "keep_last"):
        train = transfer_config.train.model_copy(update={"snapshots": policy})
        config = transfer_config.model_copy(update={"train": train, "vms": [vm]})
        runs[policy] = _trained_and_published(tmp_path_factory.mktemp(policy) / "run", config, small_log)
    return runs


def test_keep_last_gives_the_same_predictions_publish_and_report_in_a_smaller_folder(both_runs, small_log):
    from fxrec.jobs.evaluate import entries
    from fxrec.report.evaluate import evaluate_run

    every, last = both_runs["all"], both_runs["keep_last"]
    assert every.model("fm").snapshot_days() == small_log.days[:-1]
    assert last.model("fm").snapshot_days() == small_log.days[-2:-1]
    files = sorted(
        p.relative_to(every.root) for p in every.root.rglob("*.parquet") if "events" not in p.parts
    )
    assert any("vm_tae" in p.parts for p in files) and any("publish" in p.parts for p in files)
    assert files == sorted(
        p.relative_to(last.root) for p in last.root.rglob("*.parquet") if "events" not in p.parts
    )
    for path in files:
        assert pq.read_table(last.root / path).equals(pq.read_table(every.root / path)), path

    def report(run: Run) -> dict:
        return evaluate_run(
            small_log, entries(run.config, run.root, small_log.spec.surfaces), run.config.train.report_days
        )

    got, want = _flat(report(last)), _flat(report(every))
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key.endswith("gauc"):  # summed over users in polars' group order, which varies run to run
            assert got[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
        else:
            assert json.dumps(got[key]) == json.dumps(value), key  # NaN equals NaN
    assert last.model("fm").trained_through() == every.model("fm").trained_through() == small_log.days[-2]
    saved = every.disk_usage().parts["models"] - last.disk_usage().parts["models"]
    assert saved >= (len(small_log.days) - 2) * last.model("fm").snapshot(small_log.days[-2]).stat().st_size
    assert last.disk_usage().total < every.disk_usage().total


def _flat(tree, prefix: str = "") -> dict:
    """A report as {dotted path: value}."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}.{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in _flat(value, f"{prefix}[{i}]").items()}
    return {prefix: tree}


def test_a_publish_that_needs_a_pruned_snapshot_fails_before_writing_anything(both_runs):
    from fxrec.jobs.publish import publish

    run = both_runs["keep_last"]
    before = {p: p.stat().st_mtime_ns for p in run.root.rglob("*")}
    with pytest.raises(
        InputError, match=r"snapshots of .* pruned .*`train: \{snapshots: all\}`.*--fresh"
    ) as error:
        publish(run.root, run.config, delay=2, progress=False)
    assert len(error.value.problems) == 1
    with pytest.raises(InputError, match="pruned"):
        publish(run.root, run.config, delay=0, fresh=True, progress=False)  # the existing publish stays
    assert {p: p.stat().st_mtime_ns for p in run.root.rglob("*")} == before
    # the run with every snapshot publishes a new delay
    publish(both_runs["all"].root, both_runs["all"].config, delay=2, progress=False)
    assert (both_runs["all"].publish_dir("fm", 2) / PUBLISH_META).exists()


def test_an_fm_that_nothing_will_publish_keeps_only_its_newest_snapshot(tmp_path, small_log, tiny_fm_config):
    """Train and evaluate only (no experiment, no VM channels, no `publish:`): keep_last prunes at once;
    a config that will publish keeps every snapshot until it has."""
    from fxrec.jobs.snapshots import publishes
    from fxrec.jobs.train import train_model

    train = {"batch_size": 512, "checkpoint_every": 1000}
    alone = RunConfig(name="alone", simulator=None, events=str(small_log.path), fm=tiny_fm_config, train=train)
    later = RunConfig.model_validate({**alone.model_dump(), "publish": {"delays": [0]}})
    assert publishes(later) and not publishes(alone)
    every = train_model(tiny_fm_config, later, tmp_path / "later", small_log, quiet=True).snapshot_days()
    assert len(every) >= 3  # one per trained day, kept for the publish to come
    assert train_model(tiny_fm_config, alone, tmp_path / "alone", small_log, quiet=True).snapshot_days() == every[-1:]
