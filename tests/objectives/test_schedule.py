"""What the trainer trains under delayed feedback and window heads: never a conversion after its cutoff."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from fxrec.config import ModelConfig, TrainConfig
from fxrec.data.labels import observed_frame, training_cutoff
from fxrec.data.reader import iter_frames
from fxrec.objectives.feedback import DelayedFeedback, elapsed_likelihood_loss, label_loss
from fxrec.objectives.schedule import LabelSchedule
from fxrec.objectives.windows import ConversionWindows

DAY_S = 86_400
TASKS = ["click", "conversion"]


def _frames(log, group=()):
    return list(iter_frames(log, [log.spec.feature("item_id")], meta=group))


def _run(log, feedback, windows):
    windows_tasks = list(windows.tasks) if windows else []
    schedule = LabelSchedule(TASKS + windows_tasks, feedback, windows)
    out = []
    for day, frame in _frames(log, schedule.meta)[:-1]:
        cutoff = training_cutoff(day)
        out.append((cutoff, schedule.units(schedule.prepare(frame), cutoff)))
    return schedule, out


@pytest.mark.parametrize("mode", ["observed", "maturity", "corrected"])
def test_no_training_label_uses_a_conversion_after_its_cutoff(small_log, mode):
    windows = ConversionWindows("conversion", [0.5, 1, 2])
    feedback = DelayedFeedback(mode=mode, wait_days=1)
    schedule, days = _run(small_log, feedback, windows)
    trained = {task: {} for task in schedule.tasks}  # task -> {event_id: times trained}
    for cutoff, units in days:
        assert units, "every day trains something"
        for unit in units:
            frame = unit.frame
            rows = unit.rows if unit.rows is not None else torch.arange(frame.num_rows)
            ts = frame.meta["ts"][rows].to(torch.float64)
            for task in schedule.tasks:
                weight = frame.label_weights[task][rows] > 0
                positive = (frame.labels[task][rows] > 0) & weight
                happened = (
                    ts + frame.label_delays.get(task, torch.zeros(len(rows), dtype=torch.float64))[rows]
                )
                assert bool((happened[positive] < cutoff).all()), (task, cutoff)
                if task in windows.tasks:  # only closed windows, with their final (matured) label
                    assert bool((ts[weight] + windows.tasks[task] <= cutoff).all())
                for event in frame.meta["event_id"][rows][weight].tolist():
                    trained[task][event] = trained[task].get(event, 0) + 1
    assert all(n == 1 for task in trained for n in trained[task].values()), "each label trains once"
    assert len(trained["conversion_1d"]) > 0 and len(trained["conversion_12h"]) > len(
        trained["conversion_2d"]
    )


def test_maturity_trains_each_day_later_on_final_labels(small_log):
    schedule, days = _run(small_log, DelayedFeedback(mode="maturity", wait_days=2, window_days=7), None)
    frames = dict(_frames(small_log))
    assert [len(units) for _, units in days] == [0, 0, 1]  # day 0 trains at the end of day 2
    unit = days[2][1][0]
    assert unit.frame.day == small_log.days[0]
    observed = observed_frame(frames[small_log.days[0]], days[2][0]).labels["conversion"]
    torch.testing.assert_close(unit.frame.labels["conversion"], observed)


def test_corrected_mode_attaches_the_observation_share(small_log):
    schedule, days = _run(small_log, DelayedFeedback(mode="corrected", prior_events=5), None)
    cutoff, (unit,) = days[-1]
    share = unit.frame.label_observed["conversion"]
    assert bool(((share > 0) & (share <= 1)).all())
    elapsed = cutoff - unit.frame.meta["ts"].to(torch.float64)
    order = torch.argsort(elapsed)
    groups = unit.frame.meta["advertiser_id"]
    same = groups[order] == groups[order][0]  # one advertiser: its share grows with the elapsed time
    assert bool((share[order][same].diff() >= -1e-6).all())
    rates = schedule.last_rates
    assert rates is not None and rates.counts.sum() > 0


def test_options_off_train_the_day_as_observed(small_log):
    schedule = LabelSchedule(TASKS)
    assert schedule.plain and schedule.meta == ()
    day, frame = _frames(small_log)[0]
    (unit,) = schedule.units(schedule.prepare(frame), training_cutoff(day))
    assert unit.rows is None and unit.frame.label_weights == {} and unit.frame.label_observed == {}
    expected = observed_frame(frame, training_cutoff(day))
    for task in TASKS:
        assert torch.equal(unit.frame.labels[task], expected.labels[task])
    assert TrainConfig().delayed_feedback.mode == "observed"


def test_losses_reduce_to_binary_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(64), (torch.rand(64) < 0.3).float()
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    assert torch.equal(label_loss(logits, labels), bce)
    torch.testing.assert_close(label_loss(logits, labels, torch.ones(64)), bce)
    torch.testing.assert_close(label_loss(logits, labels, observed_share=torch.ones(64)), bce)
    mask = (torch.arange(64) < 10).float()
    torch.testing.assert_close(
        label_loss(logits, labels, mask), F.binary_cross_entropy_with_logits(logits[:10], labels[:10])
    )


def test_elapsed_likelihood_is_its_definition():
    logits, share = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.2, 0.5, 0.9])
    p = torch.sigmoid(logits)
    torch.testing.assert_close(elapsed_likelihood_loss(logits, torch.ones(3), share), -torch.log(p * share))
    torch.testing.assert_close(
        elapsed_likelihood_loss(logits, torch.zeros(3), share), -torch.log(1 - p * share)
    )


def test_config_blocks(tiny_vm_args):
    assert TrainConfig(delayed_feedback="corrected").delayed_feedback.mode == "corrected"
    with pytest.raises(ValidationError):
        TrainConfig(delayed_feedback={"mode": "later"})
    config = ModelConfig.model_validate({**tiny_vm_args, "name": "vm", "windows": {"days": [1, 7]}})
    assert config.windows.kwargs() == {"label": "conversion", "days": [1.0, 7.0]}
    with pytest.raises(ValidationError, match="distinct positive days"):
        ModelConfig.model_validate({**tiny_vm_args, "name": "vm", "windows": {"days": [1, 1]}})


def test_trainer_with_window_heads_and_correction(small_log, tiny_vm_args, tmp_path):
    import pyarrow.parquet as pq

    from fxrec.factory import build_model
    from fxrec.run import ModelDir
    from fxrec.train.trainer import Trainer

    config = ModelConfig.model_validate(
        {**tiny_vm_args, "name": "vm", "tasks": [], "windows": {"days": [1, 2]}}
    )
    torch.manual_seed(0)
    model = build_model(config, small_log.spec)
    assert model.tasks == ["conversion_1d", "conversion_2d"] and ConversionWindows.of(model) is not None
    train = TrainConfig(batch_size=256, threads=1, snapshots="none")
    Trainer(model, train, tmp_path / "windows", progress=False).fit(small_log, surfaces=["feed"])
    table = pq.read_table(ModelDir(tmp_path / "windows").prediction(small_log.days[-1]))
    raw = small_log.read_day(small_log.days[-1])
    raw = raw.filter(np.asarray(raw.column("surface").to_pylist()) == "feed")
    delay = raw.column("conversion_delay_s").fill_null(np.inf).to_numpy()
    matured_1d = raw.column("conversion").to_numpy() * (delay < DAY_S)
    np.testing.assert_array_equal(
        table["label_conversion_1d"].to_numpy(), matured_1d
    )  # scored on matured windows
    corrected = TrainConfig(batch_size=256, threads=1, snapshots="none", delayed_feedback="corrected")
    model = build_model(ModelConfig.model_validate({**tiny_vm_args, "name": "vm2"}), small_log.spec)
    Trainer(model, corrected, tmp_path / "corrected", progress=False).fit(small_log, surfaces=["feed"])
    assert ModelDir(tmp_path / "corrected").prediction(small_log.days[-1]).exists()
