"""`fxrec audience population | build | reach`: a tiny population built into an index and queried in
process (the table and --json), an index built from an event log, and bad input: exit code 2, the
query error's caret under the offending token, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fxrec.audience.stored_index import load_index
from fxrec.cli import app

QUERY = "age in 18..34 and (interest:sports or interest:outdoor) and not country:US and surface = video"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("audience")
    runner = CliRunner()
    made = runner.invoke(
        app, ["audience", "population", "--out", str(root / "pop"), "--users", "6000", "--chunk-size", "2500"]
    )
    assert made.exit_code == 0, made.output
    built = runner.invoke(
        app,
        [
            "audience",
            "build",
            "--population",
            str(root / "pop"),
            "--out",
            str(root / "idx"),
            "--bytes",
            "300000",
        ],
    )
    assert built.exit_code == 0, built.output
    return root / "idx"


def test_build_writes_the_index_and_its_card(index):
    stored = load_index(index)
    card = json.loads((index / "card.json").read_text())
    assert card["users"] == 6000 and card["shards"] == 4 and card["population"].endswith("pop")
    assert 0 < card["rows"] < 6000 and card["bytes"] <= 300000 * 1.2
    rows = stored.rows()
    assert len(rows) == card["rows"] and int(stored.taken.sum()) == card["rows"]
    # each stratum's rows add up to its users (weights N_h / n_h, or calibrated to a census of margins
    # kept with the index; at 300 kB the census would take over a quarter of the bytes: not kept)
    by_stratum = np.bincount(rows.row_stratum, weights=rows.weights, minlength=len(stored.taken))
    np.testing.assert_allclose(by_stratum[stored.taken > 0], stored.census.users[stored.taken > 0], rtol=1e-5)
    assert (stored.margins is not None) == (index / "margins.npz").is_file()


def test_reach_in_process_prints_the_table_and_json(index):
    runner = CliRunner()
    shown = runner.invoke(app, ["audience", "reach", "--index", str(index), "--in-process", QUERY])
    assert shown.exit_code == 0, shown.output
    assert "users" in shown.output and "impressions" in shown.output and "95% low" in shown.output
    answer = json.loads(
        runner.invoke(app, ["audience", "reach", "-i", str(index), "--in-process", "--json", QUERY]).output
    )
    assert answer["users_low"] <= answer["users"] <= answer["users_high"] and answer["mode"] == "in process"
    everyone = json.loads(
        runner.invoke(
            app, ["audience", "reach", "-i", str(index), "--in-process", "--json", "gender:f or not gender:f"]
        ).output
    )
    # every sampled user reached: each stratum's weights add up to N_h (calibrated, stored as float32)
    assert abs(everyone["users"] - 6000) < 6000 * 1e-6
    thin = json.loads(
        runner.invoke(
            app,
            [
                "audience",
                "reach",
                "-i",
                str(index),
                "--in-process",
                "--json",
                "interest:topic_190 and device:web",
            ],
        ).output
    )
    assert (
        thin["fallback"]
        and thin["fallback_strata"]
        and {"stratum", "users", "sampled"} <= set(thin["fallback_strata"][0])
    )


def test_a_bad_query_exits_2_with_a_caret(index):
    result = CliRunner().invoke(
        app, ["audience", "reach", "--index", str(index), "--in-process", "age in 18..24 and interest:sportz"]
    )
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert "unknown interest segment 'sportz'" in result.output
    text, caret = lines[-2], lines[-1]
    assert text.strip() == "age in 18..24 and interest:sportz"
    assert caret.index("^") == text.index("sportz") and caret.count("^") == len("sportz")


def test_bad_input_exits_2_and_writes_nothing(tmp_path, index):
    runner = CliRunner()
    missing = runner.invoke(app, ["audience", "reach", "--index", str(tmp_path / "nope"), "country:US"])
    assert missing.exit_code == 2 and "not a reach index" in missing.output
    both = runner.invoke(
        app,
        [
            "audience",
            "build",
            "--population",
            str(tmp_path),
            "--events",
            str(tmp_path),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert both.exit_code == 2 and "one source" in both.output
    not_population = runner.invoke(
        app, ["audience", "build", "--population", str(tmp_path), "--out", str(tmp_path / "y")]
    )
    assert not_population.exit_code == 2 and "not a population" in not_population.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    busy = runner.invoke(
        app, ["audience", "build", "--population", str(index.parent / "pop"), "--out", str(tmp_path / "busy")]
    )
    assert busy.exit_code == 2 and (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_build_from_an_event_log(tmp_path, small_log):
    result = CliRunner().invoke(
        app,
        [
            "audience",
            "build",
            "--events",
            str(small_log.path),
            "--out",
            str(tmp_path / "idx"),
            "--shards",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    stored = load_index(tmp_path / "idx")
    assert stored.shards == 2 and stored.card["events"] == str(small_log.path)
    answer = CliRunner().invoke(
        app, ["audience", "reach", "-i", str(tmp_path / "idx"), "--in-process", "--json", "surface = feed"]
    )
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.output)["users"] > 0
