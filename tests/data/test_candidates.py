"""The simulator's candidate log and quality events leave the impression log as it was."""

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from fxrec.data.candidates import CandidateLog, CandidateSpec, write_candidates
from fxrec.data.eventlog import EventLog, EventLogError
from fxrec.data.simulator import SimulatorConfig, simulate, simulate_logs, simulate_to

BASE = dict(
    days=3,
    impressions_per_day=4000,
    users=1000,
    new_users_per_day=100,
    advertisers=30,
    ads=200,
    new_ads_per_day=20,
)
# The content of `simulate(SimulatorConfig(**BASE))` before candidate logs existed.
DEFAULT_DIGEST = "c0bad7884566971ce170a78b4361aa7c7ac91fe3ffe35606f78a214e587ac694"
INTENT_DIGEST = "41ff3db17f4cb5fc378e7b171eb87d4480aa6c23c4f7aa6af9d6d83720272fb2"


def _digest(table: pa.Table) -> str:
    return hashlib.sha256(repr(table.to_pydict()).encode()).hexdigest()


def test_default_simulation_is_unchanged():
    assert _digest(simulate(SimulatorConfig(**BASE), progress=False)) == DEFAULT_DIGEST
    assert _digest(simulate(SimulatorConfig(**BASE, intent_strength=1.0), progress=False)) == INTENT_DIGEST


def test_candidate_log_and_hide_leave_the_impression_log_unchanged():
    plain = simulate(SimulatorConfig(**BASE), progress=False)
    events, candidates = simulate_logs(
        SimulatorConfig(**BASE, candidate_log_rate=0.02, quality_events=True), progress=False
    )
    assert events.drop_columns(["hide"]).equals(plain)
    hide = events.column("hide").to_numpy()
    assert (
        0 < hide.mean() < 0.2 and not (hide * events.column("click").to_numpy()).any()
    )  # hides only unclicked ads
    assert candidates is not None and candidates.num_rows > 0


def test_candidates_are_the_eligible_set_with_true_probabilities():
    events, candidates = simulate_logs(SimulatorConfig(**BASE, candidate_log_rate=0.02), progress=False)
    frame = candidates.to_pandas()
    impressions = events.to_pandas().set_index("event_id")
    requests = frame["event_id"].unique()
    assert 0.01 * len(impressions) < len(requests) < 0.03 * len(impressions)
    for event_id, group in list(frame.groupby("event_id"))[:20]:
        row = impressions.loc[event_id]
        assert (group["user_id"] == row["user_id"]).all() and (group["ts"] == row["ts"]).all()
        assert group["item_id"].is_unique and 1 <= group["auctioned"].sum() <= 6
        won = group[group["won"]]
        assert len(won) == 1 and won["item_id"].iloc[0] == row["item_id"] and won["auctioned"].iloc[0]
        # Without intent, the winner's true click probability is the impression's oracle.
        assert won["oracle_p_click"].iloc[0] == pytest.approx(
            1 / (1 + np.exp(-row["oracle_logit"])), rel=1e-5
        )
        assert won["bid"].iloc[0] == pytest.approx(row["bid"])
    for name in ("oracle_p_click", "oracle_p_conversion", "oracle_p_hide"):
        assert frame[name].between(0, 1).all() and frame[name].std() > 0


def test_written_next_to_the_impression_log(tmp_path):
    out = simulate_to(SimulatorConfig(**BASE, candidate_log_rate=0.01), tmp_path / "events", progress=False)
    log, candidates = EventLog(out), CandidateLog(out)
    assert candidates.days == log.days and candidates.spec.sample_rate == 0.01
    day = candidates.read_day(log.days[1])
    assert set(day.column("event_id").to_numpy()) <= set(
        log.read_day(log.days[1], ["event_id"]).column("event_id").to_numpy()
    )
    assert "oracle_p_click" in day.column_names
    with pytest.raises(EventLogError, match="bid"):
        write_candidates(day.drop_columns(["bid"]), tmp_path / "other", CandidateSpec(source="import"))


def test_a_real_candidate_log_without_oracle_columns(tmp_path):
    events, candidates = simulate_logs(SimulatorConfig(**BASE, candidate_log_rate=0.01), progress=False)
    real = candidates.drop_columns(["oracle_p_click", "oracle_p_conversion", "oracle_p_hide"])
    write_candidates(real, tmp_path / "events", CandidateSpec(source="import", oracle=[]))
    log = CandidateLog(tmp_path / "events")
    assert log.spec.oracle == [] and sum(log.read_day(d).num_rows for d in log.days) == real.num_rows
