"""`profile_log`: counts that match the log, and a warning for each thing that will hurt training."""

import numpy as np
import pyarrow as pa
from typer.testing import CliRunner

from fxrec.data.eventlog import EventLog, write_events
from fxrec.data.profile import FEW_EVENTS, profile_log
from fxrec.data.schema import DatasetSpec, FeatureSpec

SPEC = DatasetSpec(
    name="profiled",
    surfaces=["feed"],
    features=[FeatureSpec(name="item_id", kind="sparse", cardinality=1000), FeatureSpec(name="price", kind="dense")],
)
DAY = 86_400
START = 1_700_006_400  # a UTC midnight


def _log(tmp_path, day_sizes, clicks_per_day, repeat_items=True):
    """Days of the given sizes; day d has its first clicks_per_day[d] events clicked."""
    rng = np.random.default_rng(0)
    ts, click, item = [], [], []
    for d, (size, clicks) in enumerate(zip(day_sizes, clicks_per_day, strict=True)):
        ts.append(START + d * DAY + np.sort(rng.integers(0, DAY, size)))
        click.append((np.arange(size) < clicks).astype(np.float32))
        item.append(rng.integers(0, 20, size) if repeat_items else np.arange(size) + 1000 * d)
    n = sum(day_sizes)
    price = np.ones(n, dtype=np.float32)
    price[:7] = np.nan
    table = pa.table(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "ts": np.concatenate(ts).astype(np.int64),
            "user_id": np.arange(n, dtype=np.int64) % 50,
            "item_id": np.concatenate(item).astype(np.int64),
            "surface": ["feed"] * n,
            "click": np.concatenate(click),
            "price": pa.array(price, mask=np.isnan(price)),
        }
    )
    write_events(table, SPEC, tmp_path / "events")
    return EventLog(tmp_path / "events")


def test_counts_match_the_log(tmp_path):
    profile = profile_log(_log(tmp_path, [300, 200, 400], [30, 100, 40]))
    assert (profile.events, profile.users) == (900, 50)
    assert [d.events for d in profile.days] == [300, 200, 400]
    assert np.allclose([d.label_rates["click"] for d in profile.days], [0.1, 0.5, 0.1])
    price = next(c for c in profile.columns if c.name == "price")
    assert np.isclose(price.null_share, 7 / 900)
    assert profile.warnings == []  # a healthy log raises nothing


def test_warns_about_thin_days_constant_labels_and_one_off_ids(tmp_path):
    profile = profile_log(_log(tmp_path, [FEW_EVENTS - 1, 500, 500], [10, 0, 60], repeat_items=False))
    text = "\n".join(profile.warnings)
    assert f"1 of 3 days have fewer than {FEW_EVENTS} events" in text
    assert "label 'click' is constant on 1 day(s)" in text
    assert "'item_id'" in text and "min_count" in text  # every item occurs once


def test_cli_prints_the_profile_and_writes_json(tmp_path):
    from fxrec.cli import app

    log = _log(tmp_path, [300, 200], [30, 0])
    result = CliRunner().invoke(app, ["data", "profile", str(log.path), "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the console wraps long lines
    assert "500 events" in text and "warning" in text
    assert (tmp_path / "p.json").exists()
    missing = CliRunner().invoke(app, ["data", "profile", str(tmp_path / "nope")])
    assert missing.exit_code == 2
