"""Choosing a channel set per VM on validation days and reporting it on later, unseen test days.

Picking the lowest NE on the days one reports favours whichever set got lucky on those days, the
more so the more sets one tries. The transfer experiment therefore splits its progressive evaluation
days in time: the earlier days choose the set, the later days, never looked at while choosing,
report it. (Predictions on test days come from models that also trained on the validation days'
labels, as they would in production; what the test days are kept out of is the choice.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def split_days(days: list[str], test_days: int | None) -> tuple[list[str], list[str]]:
    """Evaluation days -> (validation days, test days), chronologically; the last `test_days` are test.

    `test_days=None` gives the later half (the smaller half when the count is odd) to test.
    """
    ordered = sorted(days)
    if len(ordered) < 2:
        raise ValueError(
            f"the transfer experiment needs at least 2 evaluation days (validation, then test); got {ordered}: "
            "raise train.report_days or use a longer log"
        )
    k = len(ordered) // 2 if test_days is None else test_days
    if not 1 <= k < len(ordered):
        raise ValueError(
            f"experiment.test_days={test_days} leaves no validation or no test day among {len(ordered)} evaluation days "
            f"({ordered[0]}..{ordered[-1]}); use 1..{len(ordered) - 1}"
        )
    return ordered[:-k], ordered[-k:]


def select_channel_set(validation_ne: Mapping[str, float]) -> str:
    """The set with the lowest validation NE; ties go to the alphabetically first name, so the choice
    depends on the numbers alone, not on the order the config lists the sets in."""
    if not validation_ne:
        raise ValueError("no channel set to choose from")
    undefined = sorted(name for name, ne in validation_ne.items() if math.isnan(ne))
    if undefined:  # NaN compares false both ways: min() would pick by position, silently
        raise ValueError(f"validation NE is undefined for channel sets {undefined} (no positive labels on the validation days?)")
    return min(validation_ne, key=lambda name: (validation_ne[name], name))
