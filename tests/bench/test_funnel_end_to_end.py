"""bench/funnel.py's end-to-end part on the tiny funnel run: `fxrec funnel` with a given ESR per day (nothing
retrained) and the per-stage p50 / p99 latency of one /v1/funnel request."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _funnel_end_to_end import end_to_end, request_latency  # noqa: E402


def test_end_to_end_and_request_latency(funnel_ran, tmp_path):
    from fxrec.funnel.esr import EarlyStageRanker
    from fxrec.run import Run

    source, _ = funnel_ran
    run = tmp_path / "run"
    shutil.copytree(source, run)
    esr = EarlyStageRanker.load(run / "funnel" / "esr")
    config = Run(run).config
    last_day = Run(run).event_log().days[-1]
    funnel = end_to_end(
        run, config, {last_day: esr}, "vm_feed", 1, {"retrieval_k": 30, "esr_k": 8, "final_k": 1}
    )
    assert len(funnel["days"]) == 1 and funnel["vm"] == "vm_feed"
    assert funnel["stages"]["esr"]["k"] == 8 and 0 < funnel["end_to_end_value_kept"] <= 1
    assert Run(run).config.funnel.esr_k == 8  # the server reads the same block
    latency = request_latency(run, "vm_feed", requests=15, warmup=2)
    assert latency["requests"] == 15
    for stage in ("retrieval", "esr", "final", "total"):
        assert 0 <= latency["ms"][stage]["p50"] <= latency["ms"][stage]["p99"]
    assert latency["ad_vectors_cached"] > 0
