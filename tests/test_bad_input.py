"""Bad input to the `fxrec` CLI: exit code 2, one line on stderr naming the file or key and what was
expected, and the run directory (or import target) exactly as it was -- byte for byte, or still absent.

Each case writes its inputs under tmp_path, then runs an argv whose {placeholders} are paths there:
{config} (config.yaml), {run} (the watched directory), {events} (a valid 2-day log), {spec} and {table}
(an import spec and CSV). Almost every case fails before any training or simulation starts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from fxrec.cli import app
from fxrec.data.eventlog import write_events
from fxrec.data.schema import DatasetSpec

FM = {"name": "fm", "role": "fm", "embedding_dim": 4, "dense_layers": [4], "heads": {"hidden": [4]}}
VM = {"name": "vm", "role": "vm", "embedding_dim": 4, "dense_layers": [4], "heads": {"hidden": [4]}}
# A simulator small enough that a case that wrongly simulates still ends quickly (and shows in the run dir).
SIMULATOR = {"days": 2, "impressions_per_day": 60, "users": 20, "new_users_per_day": 2, "ads": 10, "new_ads_per_day": 1}
SPEC = {
    "name": "shop",
    "surfaces": ["web"],
    "tasks": ["click", "conversion"],
    "features": [
        {"name": "user_id", "kind": "sparse", "cardinality": 16},
        {"name": "item_id", "kind": "sparse", "cardinality": 16},
        {"name": "price", "kind": "dense"},
    ],
    "surface": "web",
}
ROWS = {
    "ts": [1_700_000_000 + 40_000 * i for i in range(4)],
    "user_id": [1, 2, 1, 3],
    "item_id": [4, 5, 6, 4],
    "price": [1.0, 2.5, 0.5, 3.0],
    "click": [1, 0, 0, 1],
    "conversion": [1, 0, 0, 0],
}


def _yaml(path: Path, content: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(content, sort_keys=False))


def _config(tmp: Path, **overrides: Any) -> None:
    _yaml(tmp / "config.yaml", {"name": "tiny", "simulator": SIMULATOR, "fm": FM, "vms": [VM], **overrides})


def _csv(tmp: Path, **columns: list[Any]) -> None:
    rows = {**ROWS, **columns}
    lines = [",".join(rows)] + [",".join("" if v is None else str(v) for v in values) for values in zip(*rows.values(), strict=True)]
    (tmp / "table.csv").write_text("\n".join(lines) + "\n")


def _import(tmp: Path, spec: dict[str, Any] | None = None, **columns: list[Any]) -> None:
    """An import of table.csv into {run}, which already holds a valid log that must survive."""
    _yaml(tmp / "spec.yaml", spec or SPEC)
    _csv(tmp, **columns)
    dataset = DatasetSpec.model_validate({k: v for k, v in SPEC.items() if k != "surface"})
    table = {"event_id": [0], "ts": [1_700_000_000], "surface": ["web"], **{k: v[:1] for k, v in ROWS.items() if k != "ts"}}
    write_events(pa.table(table), dataset, tmp / "run")


def _trained_elsewhere(tmp: Path) -> None:
    """A run directory with something in it already, which a failing command must leave alone."""
    (tmp / "run" / "models" / "other").mkdir(parents=True)
    (tmp / "run" / "models" / "other" / "notes.txt").write_text("keep me\n")


def _dir_of_csv(tmp: Path) -> None:
    _config(tmp)
    (tmp / "csvs").mkdir()
    _csv(tmp / "csvs")


def _random_file(tmp: Path) -> None:
    _config(tmp)
    (tmp / "csvs").write_bytes(bytes(range(256)))


def _no_setup(tmp: Path) -> None:
    """Nothing: the command names files that do not exist."""


TRAIN_FM = ["train", "fm", "--config", "{config}", "--run", "{run}"]
TRAIN_VM_ON_LOG = ["train", "vm", "--config", "{config}", "--run", "{run}", "--events", "{events}"]
IMPORT = ["data", "import", "table", "{table}", "--spec", "{spec}", "--out", "{run}"]

# (id, setup(tmp), argv, expected substring of the one-line message)
CASES: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    (
        "malformed yaml",
        lambda tmp: (tmp / "config.yaml").write_text("fm: {name: fm, role: fm\n"),
        TRAIN_FM,
        "config.yaml: not valid YAML at line 2",
    ),
    (
        "unknown interaction key",
        lambda tmp: _config(tmp, fm={**FM, "interaction": {"name": "dcnv2", "num_layer": 2}}),
        TRAIN_FM,
        "fm.interaction: unknown key 'num_layer' for interaction 'dcnv2'; accepted keys: name, num_layers, low_rank, structure",
    ),
    (
        "unknown heads key",
        lambda tmp: _config(tmp, vms=[{**VM, "heads": {"hiden": [4]}}]),
        TRAIN_FM,
        "vms.0.heads: unknown key 'hiden' for heads 'shared_bottom'; accepted keys: kind, hidden, bottom_hidden",
    ),
    (
        "unknown channel key",
        lambda tmp: _config(tmp, vms=[{**VM, "channels": [{"name": "kd", "temp": 2.0}]}]),
        TRAIN_FM,
        "vms.0.channels.0: unknown key 'temp' for channel 'kd'; accepted keys: name, weight, temperature",
    ),
    (
        "events is an empty dir",
        lambda tmp: (_config(tmp), (tmp / "empty").mkdir()),
        [*TRAIN_FM, "--events", "{tmp}/empty"],
        "empty: not an event log (no spec.yaml)",
    ),
    ("events is a random file", _random_file, [*TRAIN_FM, "--events", "{tmp}/csvs"], "csvs: not an event log"),
    ("events is a dir of csv", _dir_of_csv, [*TRAIN_FM, "--events", "{tmp}/csvs"], "csvs: not an event log"),
    (
        "channels before publish",
        lambda tmp: (_config(tmp, vms=[{**VM, "channels": ["kd"]}]), _trained_elsewhere(tmp)),
        TRAIN_VM_ON_LOG,
        "publish/fm has no publish.yaml; run `fxrec publish",
    ),
    (
        "eval before training",
        lambda tmp: (_config(tmp), _trained_elsewhere(tmp)),
        ["eval", "--config", "{config}", "--run", "{run}", "--events", "{events}"],
        "models: no trained model of",
    ),
    (
        "train an unknown vm",
        _config,
        ["train", "vm", "--config", "{config}", "--run", "{run}", "--name", "nope"],
        "config.yaml: no VM named 'nope'; the config has ['vm']",
    ),
    ("import types disagree", lambda tmp: _import(tmp, item_id=[4, "five", 6, 4]), IMPORT, "column 'item_id' has type String with value 'five'; expected int64"),
    ("import an empty table", lambda tmp: _import(tmp, **{k: [] for k in ROWS}), IMPORT, "table.csv: no rows"),
    ("label not 0/1", lambda tmp: _import(tmp, conversion=[1, 0, 2, 0]), IMPORT, "table.csv: column 'conversion' has value 2.0; expected 0/1 labels"),
    ("label with nulls", lambda tmp: _import(tmp, conversion=[1, None, 0, 0]), IMPORT, "table.csv: column 'conversion' has 1 empty values"),
    (
        "vm feature not in the spec",
        lambda tmp: _config(tmp, vms=[{**VM, "features": ["item_id", "colour"]}]),
        TRAIN_VM_ON_LOG,
        "model 'vm': features ['colour'] are not in dataset 'shop'",
    ),
    (
        "unknown top-level key",
        lambda tmp: _config(tmp, trian={}),
        TRAIN_FM,
        "config.yaml: unknown key 'trian'; accepted keys: name, simulator, events, fm, vms, train",
    ),
    (
        "number that is not one",
        lambda tmp: _config(tmp, train={"dense_lr": "fast"}),
        TRAIN_FM,
        "train.dense_lr: Input should be a valid number",
    ),
    (
        "negative batch size",
        lambda tmp: _config(tmp, train={"batch_size": -5}),
        TRAIN_FM,
        "train.batch_size: Input should be greater than or equal to 1 (got -5)",
    ),
    ("missing config file", _no_setup, TRAIN_FM, "config.yaml: config file does not exist"),
    (
        "unknown interaction",
        lambda tmp: _config(tmp, fm={**FM, "interaction": {"name": "dcn3"}}),
        TRAIN_FM,
        "fm.interaction: unknown interaction 'dcn3'; known: attention_fm, dcnv2, dhen, dot",
    ),
    (
        "user tower without features",
        lambda tmp: _config(tmp, fm={**FM, "user_tower": {"dim": 4}}),
        TRAIN_FM,
        "fm.user_tower: user_tower needs the key 'features'",
    ),
    (
        "an interaction key that moved to the spec",
        lambda tmp: _config(tmp, fm={**FM, "interaction": {"name": "kunlun", "num_event_types": 2, "event_type_feature": "hist_surface_id"}}),
        TRAIN_FM,
        "fm.interaction: 'event_type_feature' is no longer a key of interaction 'kunlun': a history's event types are declared in the dataset spec",
    ),
    (
        "user tower on a vm",
        lambda tmp: _config(tmp, vms=[{**VM, "user_tower": {"features": ["item_id"]}}]),
        TRAIN_FM,
        "vms.0: user_tower is an FM key; a VM reads the FM's published user embedding through the `sum` channel",
    ),
    (
        "channels on the fm",
        lambda tmp: _config(tmp, fm={**FM, "channels": ["kd"]}),
        TRAIN_FM,
        "fm: channels are a VM key (role: vm)",
    ),
    (
        "fm surface not in the log",
        lambda tmp: _config(tmp, fm={**FM, "surfaces": ["tv"]}),
        [*TRAIN_FM, "--events", "{events}"],
        "model 'fm': surfaces ['tv'] are not in dataset 'shop'; known surfaces: ['web']",
    ),
    ("import spec names an absent column", lambda tmp: _import(tmp, {**SPEC, "features": [*SPEC["features"], {"name": "brand", "kind": "sparse", "cardinality": 8}]}), IMPORT, "table.csv: missing column 'brand'"),
    ("import duplicate event ids", lambda tmp: _import(tmp, event_id=[0, 1, 1, 2]), IMPORT, "column 'event_id' repeats the value 1; expected unique event ids"),
    ("import ts that is no time", lambda tmp: _import(tmp, ts=["soon", "later", "now", "then"]), IMPORT, "table.csv: column 'ts' has a timestamp 'soon' that does not parse"),
    ("publish a run that does not exist", _no_setup, ["publish", "--run", "{run}"], "run/config.yaml: config file does not exist"),
]


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 2-day log of 4 events (SPEC's features), for commands that get past the log check."""
    path = tmp_path_factory.mktemp("log") / "events"
    dataset = DatasetSpec.model_validate({k: v for k, v in SPEC.items() if k != "surface"})
    write_events(pa.table({"event_id": list(range(4)), "surface": ["web"] * 4, **ROWS}), dataset, path)
    return path


def _listing(root: Path) -> dict[str, tuple[int, str] | None] | None:
    """Every path under `root` with its size and sha256 (None for folders); None if `root` is absent."""
    if not root.exists():
        return None
    return {
        str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(("setup", "argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, tiny_log: Path, setup: Callable[[Path], None], argv: list[str], expected: str
) -> None:
    setup(tmp_path)
    run = tmp_path / "run"
    paths = {"tmp": tmp_path, "run": run, "config": tmp_path / "config.yaml", "events": tiny_log}
    paths.update(spec=tmp_path / "spec.yaml", table=tmp_path / "table.csv")
    before, log_before = _listing(run), _listing(tiny_log)
    result = CliRunner().invoke(app, [a.format(**paths) for a in argv])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert _listing(run) == before
    assert _listing(tiny_log) == log_before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")] == []  # no temp folders left


def test_every_config_problem_is_reported_at_once_one_line_each(tmp_path: Path, tiny_log: Path) -> None:
    """A config with three mistakes in two VMs names all three before anything runs, not one per run."""
    typo = {**VM, "name": "vm_a", "features": ["item_id", "pricee"], "surfaces": ["webb"]}
    needs_publish = {**VM, "name": "vm_b", "channels": ["kd"]}
    _config(tmp_path, vms=[typo, needs_publish])
    run = tmp_path / "run"
    argv = ["train", "vm", "--config", str(tmp_path / "config.yaml"), "--run", str(run), "--events", str(tiny_log)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") and "config.yaml" in line for line in lines), lines
    assert "'vm_a': surfaces ['webb']" in lines[0] and "'vm_a': features ['pricee']" in lines[1]
    assert "'vm_b': channels ['kd']" in lines[2] and "fxrec publish" in lines[2]
    assert not run.exists()


def test_an_experiment_without_snapshots_is_refused_before_training(tmp_path):
    from fxrec.config import load_config
    from fxrec.errors import InputError

    path = tmp_path / "run.yaml"
    path.write_text(
        "name: x\nfm: {name: fm, role: fm}\ntrain: {snapshots: none}\n"
        "experiment: {channel_sets: {none: [], kd: [kd]}}\n"
    )
    with pytest.raises(InputError, match="train.snapshots is none"):
        load_config(path)
