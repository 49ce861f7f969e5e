"""`fxrec demo`: simulate -> train the FM -> train one VM per surface -> (funnel) -> evaluate -> report -> serve.

With a candidate log in the run's events, the demo also runs `fxrec funnel` before the report.

The last step serves a VM of the run, scores a few requests and shows a newcomer what came back:
`show_requests(run, vm)` starts the real HTTP server on a loopback port in a background thread (its
stores are temporary copies, so the run is left as it was), sends requests replayed from the log --
the same user twice, so the second answer shows the embedding SOAP refreshed in between -- and one
bad request, prints each answer, stops the server and returns what it sent and received.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from fxrec.config import RunConfig
from fxrec.data.eventlog import EventLog
from fxrec.jobs import print_disk_usage
from fxrec.jobs.evaluate import evaluate_and_report
from fxrec.jobs.experiment import model_name, run_transfer_experiment
from fxrec.jobs.loadtest import sample_payloads
from fxrec.jobs.train import check_models, planned_spec, prepare_events, train_model
from fxrec.run import Run
from fxrec.serving.guard import wait_until
from fxrec.serving.server import BackgroundServer
from fxrec.serving.service import Service, ServingConfig

console = Console(width=160)


def run_demo(config: RunConfig, run: Path, fresh: bool = False, serve: bool = True) -> dict:
    spec = planned_spec(config, run, fresh)
    check_models([config.fm, *config.expand_vms(spec.surfaces)], spec, run)
    log = prepare_events(config, run, fresh=fresh)
    train_model(config.fm, config, run, log, fresh=fresh)
    for vm in config.expand_vms(log.spec.surfaces):
        train_model(vm, config, run, log, fresh=fresh)
    transfer = run_transfer_experiment(config, run, log, fresh=fresh) if config.experiment is not None else None
    show_funnel(config, run, log)
    content = evaluate_and_report(config, run, log, transfer)
    if serve:
        show_serving(config, run, log, transfer)
    print_disk_usage(run, console)
    return content


def show_funnel(config: RunConfig, run: Path, log: EventLog) -> None:
    """`fxrec funnel` when the run's log has a candidate log (the simulator's `candidate_log_rate` > 0),
    so the report gains its funnel section. configs/demo.yaml logs the candidates of 0.3% of requests
    and keeps a VM snapshot per day (`train.vm_snapshots`), which the final stage needs. A funnel that
    cannot run (say, VMs without snapshots) is one line, not the end of the demo."""
    from fxrec.data.candidates import CANDIDATE_SPEC_FILE, candidates_dir
    from fxrec.errors import InputError
    from fxrec.jobs.funnel import run_funnel

    if not (candidates_dir(log.path) / CANDIDATE_SPEC_FILE).exists():
        return
    console.rule(f"the ads funnel: fxrec funnel --run {run}")
    try:
        run_funnel(run, config)
    except InputError as error:
        console.print(f"funnel skipped: {' '.join(str(error).split())}", highlight=False)


def show_serving(config: RunConfig, run: Path, log: EventLog, transfer: dict | None) -> None:
    """End of the demo: serve the best expert of the first surface and score a few requests."""
    vm = config.expand_vms(log.spec.surfaces)[0]
    name = vm.name
    if transfer is not None and vm.name in transfer["best"] and config.experiment is not None:
        name = model_name(vm.name, transfer["best"][vm.name]["channel_set"], 0, config.experiment.seeds[0])
    console.rule(f"serving {name}: fxrec serve --run {run} --vm {name}")
    show_requests(run, name, console=console)


def show_requests(
    run: Path, vm: str, requests: int = 3, candidates: int = 4, console: Console | None = None
) -> list[dict]:
    """Serve `vm` of `run`, score `requests` replayed requests (+ a repeat and a bad one), print them."""
    run = Path(run)
    console = console or Console(width=140)
    exchanges: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fxrec-demo-serve-") as tmp:
        run_dir = Run(run)
        published = run_dir.user_store(run_dir.config.fm.name)
        if published.exists():
            shutil.copytree(published, Path(tmp) / "store")
        config = ServingConfig(
            mode="async",
            store=f"lmdb://{Path(tmp) / 'store'}",
            cache=f"lmdb://{Path(tmp) / 'solaris'}",
            refresh_in="thread",
            refresh_interval=0.0,
        )
        service = Service(run, vm, config)
        sampled = sample_payloads(
            run, vm, 20 * requests, candidates, users=4 * requests, catalog=service.catalog
        )
        payloads = list({p["user_id"]: p for p in sampled}.values())[:requests]  # different users
        with BackgroundServer(service) as server, httpx.Client(base_url=server.url, timeout=30.0) as client:
            console.rule(
                f"[bold]fxrec serve[/]: {vm} on {server.url} (mode async: SOAP refresh + SOLARIS precompute)"
            )
            console.print(
                f"try it yourself: fxrec serve --run {run} --vm {vm}   then   curl -s localhost:8000/v1/score "
                f"-H 'content-type: application/json' -d '{json.dumps(payloads[0])}'"
            )
            for i, payload in enumerate(payloads):
                exchanges.append(
                    _exchange(client, payload, console, f"request {i + 1}: user {payload['user_id']}")
                )
            done = lambda: service.metrics.refresh_events.labels(event="done")._value.get() >= 1  # noqa: E731
            wait_until(done, timeout=15)
            time.sleep(0.2)
            exchanges.append(
                _exchange(
                    client,
                    payloads[0],
                    console,
                    f"request 1 again, after the asynchronous refresh: user {payloads[0]['user_id']}",
                )
            )
            bad = {**payloads[0], "context": {**payloads[0]["context"], "colour": 3}}
            exchanges.append(
                _exchange(client, bad, console, "a bad request (a feature the run does not know)")
            )
            console.print(f"health: {client.get('/healthz').json()}")
    return exchanges


def _exchange(client: httpx.Client, payload: dict, console: Console, title: str) -> dict:
    started = time.perf_counter()
    response = client.post("/v1/score", json=payload)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    body = response.json()
    if response.status_code != 200:
        console.print(f"[bold]{title}[/] -> HTTP {response.status_code}: {body.get('error')}")
        return {"request": payload, "status": response.status_code, "response": body}
    table = Table(
        title=f"{title} -> HTTP 200 in {elapsed_ms:.1f} ms (VM {body['model_versions']['vm']}, FM {body['model_versions']['fm']})"
    )
    tasks = list(body["candidates"][0]["scores"]) if body["candidates"] else []
    features = list(body["sources"])
    for column in ["item_id", *[f"p({t})" for t in tasks], *[f"source: {f}" for f in features]]:
        table.add_column(column, justify="right" if column.startswith(("p(", "item")) else "left")
    for candidate in body["candidates"]:
        scores = [f"{candidate['scores'][t]:.4f}" for t in tasks]
        table.add_row(str(candidate["item_id"]), *scores, *[candidate["sources"][f] for f in features])
    console.print(table)
    return {"request": payload, "status": response.status_code, "response": body}
