"""The ESR trains on the days before t only; candidate rows are their request's impression row."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from fxrec.config import VMConfig
from fxrec.data.batches import EventFrame
from fxrec.data.candidates import CandidateLog
from fxrec.data.eventlog import EventLog, day_start_ts
from fxrec.data.reader import iter_frames, iter_tables
from fxrec.data.simulator import SimulatorConfig, simulate_to
from fxrec.factory import build_model
from fxrec.funnel.candidate_rows import iter_candidate_rows
from fxrec.funnel.esr import EsrFeatures
from fxrec.funnel.esr.rank import esr_scores
from fxrec.funnel.esr.train import EsrTrainConfig, train_esr
from fxrec.funnel.final_stage import FinalStage

SIM = SimulatorConfig(
    seed=3,
    days=4,
    impressions_per_day=1500,
    users=300,
    new_users_per_day=10,
    advertisers=20,
    ads=80,
    new_ads_per_day=5,
    candidate_log_rate=0.02,
    quality_events=True,
)
TINY = EsrTrainConfig(dim=4, hidden=[8], out=8, head_dim=4, batch_size=256, distill_rows_per_day=500)


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return simulate_to(SIM, tmp_path_factory.mktemp("esr") / "events", progress=False)


def _teacher(log: EventLog, seed: int = 0) -> dict[str, pa.Table]:
    """Made-up final-stage scores for every logged candidate."""
    candidates, out = CandidateLog(log.path), {}
    rng = np.random.default_rng(seed)
    for day in candidates.days:
        keys = candidates.read_day(day, ["event_id", "item_id"])
        n = keys.num_rows
        out[day] = keys.append_column("p_click", pa.array(rng.uniform(0, 0.2, n).astype(np.float32)))
        out[day] = out[day].append_column("p_conversion", pa.array(rng.uniform(0, 0.5, n).astype(np.float32)))
        out[day] = out[day].append_column("p_hide", pa.array(rng.uniform(0, 0.1, n).astype(np.float32)))
    return out


def _rewrite(path, day: str, change) -> None:
    for file in sorted((path / f"day={day}").glob("*.parquet")):
        pq.write_table(change(pq.read_table(file)), file)


def test_esr_training_for_day_t_reads_only_rows_before_t(events, tmp_path):
    log = EventLog(events)
    t = log.days[2]
    teacher = _teacher(log)
    model = train_esr(log, t, teacher=teacher, config=TINY)
    assert model.tasks == ["click", "conversion", "hide"] and model.notes["days"] == log.days[:2]

    # Another world from day t on: labels flipped, users and ads swapped, the candidate log and the
    # teacher's scores changed; and a conversion of day t-1 that happens after 00:00 of day t removed.
    other = tmp_path / "events"
    shutil.copytree(events, other)
    flip = lambda table: table.set_column(  # noqa: E731
        table.column_names.index("click"), "click", pc.subtract(1.0, table.column("click"))
    )
    swap = lambda table: table.set_column(  # noqa: E731
        table.column_names.index("user_id"),
        "user_id",
        pa.array(table.column("user_id").to_numpy()[::-1].copy()),
    )
    for day in log.days[2:]:
        _rewrite(other, day, lambda table: swap(flip(table)))
        _rewrite(other / "candidates", day, lambda table: table.set_column(
            table.column_names.index("bid"), "bid", pc.multiply(table.column("bid"), 3.0)
        ))  # fmt: skip
    cutoff = day_start_ts(t)

    def late_conversions_gone(table: pa.Table) -> pa.Table:
        ts = table.column("ts").to_numpy()
        delay = table.column("conversion_delay_s").fill_null(0.0).to_numpy(zero_copy_only=False)
        late = (table.column("conversion").to_numpy() > 0) & (ts + delay >= cutoff)
        assert late.any(), "the check needs a conversion of day t-1 that happens on day t or later"
        conversion = np.where(late, 0.0, table.column("conversion").to_numpy()).astype(np.float32)
        return table.set_column(table.column_names.index("conversion"), "conversion", pa.array(conversion))

    _rewrite(other, log.days[1], late_conversions_gone)
    changed = {day: (scores if day < t else _teacher(log, seed=1)[day]) for day, scores in teacher.items()}
    again = train_esr(EventLog(other), t, teacher=changed, config=TINY)
    for key, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key

    # and what it learned from the days before t does change it
    _rewrite(other, log.days[1], flip)
    peeked = train_esr(EventLog(other), t, teacher=changed, config=TINY)
    assert any(not torch.equal(peeked.state_dict()[k], v) for k, v in model.state_dict().items())


def test_won_candidate_rows_score_exactly_like_their_impression(events):
    log = EventLog(events)
    spec = log.spec
    vm = VMConfig(name="vm", tasks=["click", "conversion", "hide"], dense_layers=[8], heads={"hidden": [8]})
    torch.manual_seed(0)
    model = build_model(vm, spec).eval()
    stage = FinalStage(model, spec, log)
    day = log.days[2]
    _, frame = next(iter_frames(log, stage.features, days=[day]))
    with torch.no_grad():
        logits = model(frame.batch(0, frame.num_rows)).logits
    impression = {int(e): i for i, e in enumerate(frame.meta["event_id"].numpy())}
    (scored_day, rows, histories), *_ = list(iter_candidate_rows(log, stage.features, [day]))
    scores = stage.score_day(day, rows, histories)
    won = scores.filter(scores.column("won")).to_pydict()
    assert scored_day == day and len(won["event_id"]) > 5
    at = np.array([impression[e] for e in won["event_id"]])
    for task, column in (("click", "p_click"), ("hide", "p_hide")):
        np.testing.assert_allclose(np.array(won[column]), torch.sigmoid(logits[task][at]).numpy(), rtol=1e-6)
    # feature for feature: the winner's candidate row is its impression row
    won_rows = torch.from_numpy(np.flatnonzero(rows.column("won").to_numpy(zero_copy_only=False)))
    candidate = EventFrame(rows, spec, stage.features, histories).take(won_rows)
    impression_rows = frame.take(torch.from_numpy(at))
    assert torch.equal(candidate.dense, impression_rows.dense)
    assert torch.equal(candidate.sparse.values(), impression_rows.sparse.values())
    assert torch.equal(candidate.sparse.lengths(), impression_rows.sparse.lengths())
    assert candidate.sparse.keys() == impression_rows.sparse.keys()
    with torch.no_grad():  # the same rows in the same batch: the same numbers
        for task in model.tasks:
            assert torch.equal(model(candidate).logits[task], model(impression_rows).logits[task])
    assert stage.note == ""

    # the ESR's towers read the same tensors from the winner's candidate row as from its impression
    features = EsrFeatures(spec)
    esr = train_esr(log, log.days[1], config=TINY)
    (_, rows, histories), *_ = list(iter_candidate_rows(log, features.specs(), [day]))
    on_rows = esr_scores(esr, features, rows, histories)
    (_, impressions, impression_history), *_ = list(
        iter_tables(log, features.specs(), days=[day], meta=("bid",))
    )
    on_impressions = esr_scores(esr, features, impressions, impression_history)
    won_rows = np.flatnonzero(rows.column("won").to_numpy(zero_copy_only=False))
    imp_index = {int(e): i for i, e in enumerate(impressions.column("event_id").to_numpy())}
    at = np.array([imp_index[int(e)] for e in rows.column("event_id").to_numpy()[won_rows]])
    for head in ("click", "conversion", "hide", "score"):
        np.testing.assert_allclose(on_rows[head][won_rows], on_impressions[head][at], rtol=1e-6)


def test_final_stage_scores_each_day_with_the_vm_that_served_it(events, tmp_path):
    from fxrec.config import FMConfig, RunConfig
    from fxrec.factory import load_model
    from fxrec.jobs.train import train_model
    from fxrec.run import Run

    log = EventLog(events)
    small = dict(embedding_dim=4, dense_layers=[8], heads={"hidden": [8]})
    vms = [
        VMConfig(name="vm", tasks=["click", "conversion", "hide"], **small),
        VMConfig(name="vm_no_hide", tasks=["click", "conversion"], **small),
    ]
    config = RunConfig(
        simulator=None,
        events=str(events),
        fm=FMConfig(name="fm", **small),
        vms=vms,
        train={"batch_size": 256, "threads": 1, "vm_snapshots": True, "probe": False},
    )
    run = Run(tmp_path / "run", config)
    for vm in vms:
        train_model(vm, config, run.root, log, quiet=True)
    stage = FinalStage.from_run(run, "vm")
    scored = dict(stage.score_log())
    assert list(scored) == log.days[1:]  # day 0 has no VM that served it
    day = log.days[2]
    served, _, _ = load_model(run.model("vm").root, f"snapshots/day={log.days[1]}.pt")
    (_, rows, histories), *_ = list(iter_candidate_rows(log, stage.features, [day]))
    by_hand = FinalStage(served, log.spec, log).score_day(day, rows, histories)
    assert by_hand.column("value").equals(scored[day].column("value"))
    assert stage.note == "" and float(pc.max(scored[day].column("p_hide")).as_py()) > 0
    # a VM without a hide head: p_hide = 0, the note says so, the value is bid x pCTR x pCVR
    no_hide = FinalStage.from_run(run, "vm_no_hide")
    last = dict(no_hide.score_log([log.days[-1]]))[log.days[-1]]
    assert "no hide head" in no_hide.note and pc.max(last.column("p_hide")).as_py() == 0.0
    bid, ctr, cvr = (last.column(c).to_numpy().astype(np.float64) for c in ("bid", "p_click", "p_conversion"))
    np.testing.assert_allclose(last.column("value").to_numpy(), bid * ctr * cvr, rtol=1e-5)
