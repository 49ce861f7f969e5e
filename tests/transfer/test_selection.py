"""Validation/test split of the evaluation days and the choice of a channel set on validation NE."""

from __future__ import annotations

import pytest

from fxrec.transfer.selection import select_channel_set, split_days

DAYS = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06"]


def test_split_puts_the_last_days_in_test_and_keeps_them_out_of_validation():
    validation, test = split_days(list(reversed(DAYS)), test_days=2)
    assert test == DAYS[-2:]
    assert validation == DAYS[:-2]
    assert max(validation) < min(test)  # chronological: nothing chosen on a day after one it reports


def test_split_default_gives_the_later_half_to_test():
    validation, test = split_days(DAYS, test_days=None)
    assert (validation, test) == (DAYS[:3], DAYS[3:])
    assert split_days(DAYS[:2], None) == (DAYS[:1], DAYS[1:2])


@pytest.mark.parametrize("test_days", [0, 5, 9])
def test_split_refuses_an_empty_side(test_days):
    with pytest.raises(ValueError, match="no validation or no test day"):
        split_days(DAYS, test_days)
    with pytest.raises(ValueError, match="at least 2 evaluation days"):
        split_days(DAYS[:1], None)


def test_selection_takes_the_lowest_validation_ne_and_breaks_ties_by_name():
    assert select_channel_set({"none": 0.90, "kd": 0.88, "sum": 0.89}) == "kd"
    # A tie goes the same way whatever order the config lists the sets in.
    assert select_channel_set({"sum": 0.88, "kd": 0.88, "none": 0.9}) == "kd"
    assert select_channel_set({"kd": 0.88, "sum": 0.88}) == "kd"
    assert select_channel_set({"none": 0.87, "kd": 0.88}) == "none"  # no channel helps: keep none


def test_selection_refuses_an_undefined_validation_ne():
    with pytest.raises(ValueError, match=r"undefined for channel sets \['kd'\]"):
        select_channel_set({"none": 0.9, "kd": float("nan")})
