"""Labels as observed: a conversion counts for training only once it has happened before the cutoff."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from fxrec.data.batches import EventFrame
from fxrec.data.labels import observed_labels, training_cutoff
from fxrec.data.schema import DatasetSpec

DAY_S = 86_400


def _day_frame(log, day: str) -> tuple[EventFrame, dict[str, np.ndarray]]:
    table = log.read_day(day)
    raw = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("ts", "click", "conversion")}
    raw["conversion_time"] = raw["ts"] + table.column("conversion_delay_s").fill_null(np.inf).to_numpy().astype(np.float64)
    return EventFrame(table, log.spec, [log.spec.feature("item_id")]), raw


def test_training_cutoff_is_the_end_of_the_utc_day(small_log):
    for day in small_log.days:
        ts = small_log.read_day(day, ["ts"]).column("ts").to_numpy()
        assert training_cutoff(day) == ts.max() // DAY_S * DAY_S + DAY_S
        assert training_cutoff(day) > ts.max() and training_cutoff(day) - DAY_S <= ts.min()


def test_conversions_after_the_cutoff_are_negatives(small_log):
    day = small_log.days[0]
    frame, raw = _day_frame(small_log, day)
    cutoff = training_cutoff(day)
    labels = observed_labels(frame, cutoff)
    expected = (raw["conversion"] > 0) & (raw["conversion_time"] < cutoff)
    np.testing.assert_array_equal(labels["conversion"].numpy(), expected.astype(np.float32))
    late = (raw["conversion"] > 0) & ~expected
    assert late.sum() > 0 and expected.sum() > 0, "the log must have conversions on both sides of the cutoff"
    np.testing.assert_array_equal(labels["click"].numpy(), raw["click"])  # clicks are known at once
    np.testing.assert_array_equal(frame.labels["conversion"].numpy(), raw["conversion"])  # the frame stays matured
    # A week later every conversion of the day has happened: observed == matured.
    np.testing.assert_array_equal(observed_labels(frame, cutoff + 8 * DAY_S)["conversion"].numpy(), raw["conversion"])


def test_observed_frame_batches_carry_the_observed_labels(small_log):
    from fxrec.data.labels import observed_frame

    day = small_log.days[0]
    frame, raw = _day_frame(small_log, day)
    observed = observed_frame(frame, training_cutoff(day))
    batch = observed.batch(0, frame.num_rows)
    expected = (raw["conversion"] > 0) & (raw["conversion_time"] < training_cutoff(day))
    np.testing.assert_array_equal(batch.labels["conversion"].numpy(), expected.astype(np.float32))
    assert frame.batch(0, frame.num_rows).labels["conversion"].sum() == raw["conversion"].sum()


def test_a_cutoff_before_an_event_is_refused(small_log):
    day = small_log.days[0]
    frame, raw = _day_frame(small_log, day)
    with pytest.raises(ValueError, match="not after every event"):
        observed_labels(frame, int(raw["ts"].max()))


@pytest.mark.parametrize("history_label", ["user_id", "ts", "conversion_delay_s", "purchases"])
def test_history_label_must_be_a_label(history_label):
    with pytest.raises(ValidationError, match=f"history_label '{history_label}' is not a label"):
        DatasetSpec(name="d", features=[], surfaces=["feed"], history_label=history_label)


@pytest.mark.parametrize("history_label", ["click", "conversion", "label_purchase", "like"])
def test_labels_are_accepted_as_history_label(history_label):
    DatasetSpec(name="d", features=[], surfaces=["feed"], tasks=["click", "like"], history_label=history_label)
