"""`fxrec plan`: tables parsed from the command line, 1D and 2D rows from TorchRec's planner on a
simulated topology (small, so the test is quick), and the traffic formulas on a hand-counted plan."""

from __future__ import annotations

import json

import pytest

from fxrec.dist.simulated import compare, parse_tables
from fxrec.dist.traffic import Shard, rank_costs, summarize
from fxrec.errors import InputError


def test_tables_parse_rows_dims_counts_and_pooling():
    tables = parse_tables("1e9x128, 1e6x64*3@20")
    assert [(t.rows, t.dim, t.pooling) for t in tables] == [(10**9, 128, 1.0)] + [(10**6, 64, 20.0)] * 3
    assert len({t.name for t in tables}) == 4
    with pytest.raises(InputError, match="ROWSxDIM"):
        parse_tables("1e9by128")


def test_table_wise_traffic_counts_every_peer():
    # two tables of width 8 on ranks 0 and 1 of 4, batch 10 a rank, 2 ids an example
    shards = [Shard("a", "table_wise", 0, 100, 8, 2.0), Shard("b", "table_wise", 1, 50, 8, 2.0)]
    c = rank_costs(shards, group=4, batch=10)
    assert c.output_bytes.tolist() == [3 * 10 * 8 * 4, 3 * 10 * 8 * 4, 0, 0]
    assert c.backward_bytes.tolist() == [10 * 8 * 4, 10 * 8 * 4, 2 * 10 * 8 * 4, 2 * 10 * 8 * 4]
    ids = 10 * (2 * 8 + 4)
    assert c.input_bytes.tolist() == [ids, ids, 2 * ids, 2 * ids]
    assert c.memory.tolist() == [100 * 8 * 4 + 100 * 4, 50 * 8 * 4 + 50 * 4, 0, 0]
    assert c.peers.tolist() == [3, 3, 2, 2]
    two_d = summarize(shards, ranks=8, group=4, batch=10, sync_every=4)
    assert two_d.replicas == 2 and two_d.layout == "2D/4"
    assert two_d.replica_allreduce_bytes == pytest.approx(2 * 1 / 2 * (100 * 8 * 4 + 100 * 4))
    assert two_d.replica_allreduce_per_step == pytest.approx(two_d.replica_allreduce_bytes / 4)


def test_compare_plans_1d_and_2d_on_a_simulated_cluster(tmp_path):
    from fxrec.jobs.plan import plan_job

    rows = plan_job("1e6x64*4,1e5x32*4", ranks=[8, 16], group=8, batch_size=64, sync_every=2, out=tmp_path)
    assert [(r.ranks, r.layout) for r in rows] == [(8, "1D"), (16, "1D"), (16, "2D/8")]
    one_d_8, one_d_16, two_d_16 = rows
    assert two_d_16.peers <= one_d_16.peers
    assert two_d_16.memory_bytes == one_d_8.memory_bytes  # a group of 8 is the 8-rank plan
    assert two_d_16.replica_allreduce_bytes > 0 and one_d_16.replica_allreduce_bytes == 0
    assert all(r.memory_bytes > 0 and r.imbalance >= 1 for r in rows)
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert len(saved["rows"]) == 3 and (tmp_path / "plan.png").stat().st_size > 0
    with pytest.raises(InputError, match="groups of"):
        compare(parse_tables("1e5x32"), [12], group=8)
