"""A request's `window_s`: a VM with window heads answers it by Personalized Interpolation with the
delay rates it saved at its training cutoff; anything else is a 422 naming what the model serves."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from helpers import last_day_events, make_service, request_for

from fxrec.data.labels import training_cutoff
from fxrec.objectives.delays import fit_delay_rates
from fxrec.objectives.interpolation import interpolate
from fxrec.objectives.window_rates import WindowRates, fit_window_rates
from fxrec.objectives.windows import ConversionWindows
from fxrec.serving.app import create_app

DAY_S = 86_400


@pytest.fixture(scope="module")
def window_run(tmp_path_factory, small_log, tiny_fm_config, tiny_vm_args):
    """A run with one VM on feed with 1-day and 7-day conversion heads (and a plain one)."""
    from fxrec.config import RunConfig, VMConfig
    from fxrec.jobs.train import train_model
    from fxrec.run import Run

    config = RunConfig(
        name="windows",
        simulator=None,
        events=str(small_log.path),
        fm=tiny_fm_config,
        vms=[
            VMConfig(name="vm_windows", windows={"days": [1, 7]}, **tiny_vm_args),
            VMConfig(name="vm_plain", **tiny_vm_args),
        ],
        train={"batch_size": 256, "checkpoint_every": 1000},
    )
    run = tmp_path_factory.mktemp("windows") / "run"
    run.mkdir()
    Run(run, config).write_config()
    for vm in config.vms:
        train_model(vm, config, run, small_log, quiet=True)
    return run


@pytest.fixture(scope="module")
def client(window_run, catalog, tmp_path_factory):
    service = make_service(window_run, "vm_windows", tmp_path_factory.mktemp("w"), catalog=catalog, mode="vm")
    with TestClient(create_app(service)) as client:
        yield client


@pytest.fixture(scope="module")
def request_body(catalog, small_log):
    events = last_day_events(small_log)
    items = events["item_id"].unique().sort().to_list()[:12]
    return request_for(catalog, events.row(0, named=True), items=items)


def _advertisers(catalog, items: list[int]) -> np.ndarray:
    rows = catalog.item_rows(np.asarray(items, dtype=np.int64))
    return catalog.items.column("advertiser_id").take(pa.array(rows)).to_numpy()


def test_window_scores_interpolate_the_models_own_heads(client, window_run, catalog, request_body):
    from fxrec.run import Run

    rates = WindowRates.load(Run(window_run).model("vm_windows").delay_rates_json)
    items = [c["item_id"] for c in request_body["candidates"]]
    beta = rates.of(_advertisers(catalog, items))
    assert len(rates.rates) > 0 and rates.short_task == "conversion_1d" and rates.long_task == "conversion_7d"
    previous = None
    for window_s in (DAY_S, 2 * DAY_S, 3.5 * DAY_S, 5 * DAY_S, 7 * DAY_S):
        response = client.post("/v1/score", json={**request_body, "window_s": window_s})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["window_s"] == window_s
        short = np.array([c["scores"]["conversion_1d"] for c in body["candidates"]])
        long = np.array([c["scores"]["conversion_7d"] for c in body["candidates"]])
        served = np.array([c["window_score"] for c in body["candidates"]])
        expected = interpolate(short, long, beta, DAY_S, 7 * DAY_S, window_s)
        assert np.array_equal(served, expected)  # exact: the saved β, the served heads
        assert np.all(served >= np.minimum(short, long)) and np.all(served <= np.maximum(short, long))
        if window_s == DAY_S:
            assert np.array_equal(served, short)
        if window_s == 7 * DAY_S:
            assert np.array_equal(served, long)
        if previous is not None:  # monotone in the window: toward the long head as T grows
            toward_long = np.sign(long - short)
            assert np.all(toward_long * (served - previous) >= -1e-15)
        previous = served
    assert not np.array_equal(short, long)  # the heads differ, so the checks above say something


def test_without_window_s_the_response_is_unchanged(client, request_body):
    body = client.post("/v1/score", json=request_body).json()
    assert "window_s" not in body and all("window_score" not in c for c in body["candidates"])


@pytest.mark.parametrize("window_s", [3600, 8 * DAY_S, 10**9])
def test_window_outside_the_heads_is_a_422_naming_the_range(client, request_body, window_s):
    response = client.post("/v1/score", json={**request_body, "window_s": window_s})
    assert response.status_code == 422, response.text
    message = response.json()["error"]
    assert "window_s" in message and "86400..604800 seconds" in message and "1d..7d" in message, message


@pytest.mark.parametrize("window_s", [0, -5, "3d", True])
def test_malformed_window_is_a_422(client, request_body, window_s):
    response = client.post("/v1/score", json={**request_body, "window_s": window_s})
    assert response.status_code == 422 and "window_s" in response.json()["error"], response.text


def test_a_vm_without_window_heads_refuses_window_s(window_run, catalog, request_body, tmp_path):
    service = make_service(window_run, "vm_plain", tmp_path, catalog=catalog, mode="vm")
    with TestClient(create_app(service)) as plain:
        response = plain.post("/v1/score", json={**request_body, "window_s": 2 * DAY_S})
        assert response.status_code == 422
        assert "no conversion window heads" in response.json()["error"]
        assert plain.post("/v1/score", json=request_body).status_code == 200


def test_saved_rates_read_only_delays_before_the_cutoff(window_run, small_log):
    """The file equals a fit on exactly the conversions with ts + delay < cutoff of the days trained
    through; a fit that also read later conversions (the last day's, or ones landing after the
    cutoff) differs, so a leak would fail this test."""
    from fxrec.run import Run

    saved = json.loads(Run(window_run).model("vm_windows").delay_rates_json.read_text())
    trained_through = small_log.days[-2]
    cutoff = training_cutoff(trained_through)
    assert saved["trained_through"] == trained_through and saved["cutoff_ts"] == cutoff
    columns = ["ts", "surface", "advertiser_id", "conversion", "conversion_delay_s"]
    table = pa.concat_tables([small_log.read_day(d, columns) for d in small_log.days])
    table = table.filter(pa.compute.equal(table.column("surface"), "feed"))
    ts = table.column("ts").to_numpy().astype(np.float64)
    groups = table.column("advertiser_id").to_numpy()
    delay = table.column("conversion_delay_s").fill_null(np.inf).to_numpy()
    converted = table.column("conversion").to_numpy() > 0
    limits = np.minimum(cutoff - ts, 7 * DAY_S)
    seen = converted & (delay < limits)
    late = converted & ~seen & np.isfinite(delay)
    assert late.sum() > 0  # there are conversions a leaky fit could have read
    num_groups = int(groups[converted].max()) + 1
    honest = fit_delay_rates(delay[seen], limits[seen], groups[seen], num_groups, 20.0)
    assert saved["global_rate"] == honest.global_rate
    assert {int(g): r for g, r in saved["rates"].items()} == {
        int(g): float(honest.rates[g]) for g in np.flatnonzero(honest.counts)
    }
    leaky = fit_delay_rates(
        delay[converted & np.isfinite(delay)],
        np.full(int((converted & np.isfinite(delay)).sum()), 7.0 * DAY_S),
        groups[converted & np.isfinite(delay)],
        num_groups,
        20.0,
    )
    assert leaky.global_rate != honest.global_rate


def test_rates_ignore_what_happens_after_the_cutoff(small_log, tmp_path):
    """Delaying further every conversion that lands after the cutoff changes no rate; fitting a day
    later (the cutoff moved past them) does."""
    import shutil

    import pyarrow.parquet as pq

    from fxrec.data.eventlog import EventLog

    copy = tmp_path / "events"
    shutil.copytree(small_log.path, copy)
    trained_through = small_log.days[-2]
    cutoff = training_cutoff(trained_through)
    moved_any = 0
    for day in small_log.days:
        for path in EventLog(copy).day_files(day):
            table = pq.read_table(path)
            ts = table.column("ts").to_numpy().astype(np.float64)
            column = table.column("conversion_delay_s")
            delay = column.to_numpy(zero_copy_only=False).astype(np.float64)  # NaN where no conversion
            after = np.nan_to_num(ts + delay, nan=-np.inf) >= cutoff
            moved_any += int(after.sum())
            delay = np.where(after, delay + 3600.0, delay)
            index = table.schema.get_field_index("conversion_delay_s")
            replaced = pa.array(delay, mask=np.isnan(delay)).cast(column.type)
            pq.write_table(table.set_column(index, "conversion_delay_s", replaced), path)
    assert moved_any > 0
    windows = ConversionWindows("conversion", [1, 7])
    original = fit_window_rates(small_log, windows, trained_through)
    changed = fit_window_rates(EventLog(copy), windows, trained_through)
    assert original.to_dict() == changed.to_dict()
    assert fit_window_rates(small_log, windows, small_log.days[-1]).to_dict() != original.to_dict()


def test_a_model_without_saved_rates_gets_the_same_rates_at_load(window_run, small_log):
    """A VM with window heads trained before fxrec saved its rates: the server fits them the same way."""
    from fxrec.run import Run
    from fxrec.serving.windows import ServedWindows

    handle = Run(window_run)
    path = handle.model("vm_windows").delay_rates_json
    saved = path.read_text()
    path.unlink()
    try:
        served = ServedWindows.load(handle, handle.load_model("vm_windows"))
    finally:
        path.write_text(saved)
    assert served.rates is not None and served.rates.to_dict() == json.loads(saved)
