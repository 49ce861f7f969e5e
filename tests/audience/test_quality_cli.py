"""`fxrec audience campaigns` and `fxrec audience quality` on a tiny population: the table and
quality.json; bad input exits 2 with one line per problem and writes nothing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fxrec.audience.population import PopulationConfig, write_population
from fxrec.cli import app


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    path = tmp_path_factory.mktemp("population")
    write_population(PopulationConfig(users=12_000, chunk_size=6_000, interests=24), path)
    result = CliRunner().invoke(
        app, ["audience", "campaigns", str(path), "--campaigns", "40", "--segments", "6"]
    )
    assert result.exit_code == 0, result.output
    assert "40 campaigns, 6 segments, 5 providers" in result.output
    return path


def test_quality_prints_the_provider_table_and_writes_the_report(population, tmp_path):
    out = tmp_path / "q.json"
    args = ["audience", "quality", str(population), "-o", str(out), "--segment", "sports"]
    result = CliRunner().invoke(app, [*args, "--target", "age in 18..44", "--budget", "3000"])
    assert result.exit_code == 0, result.output
    for word in ("provider", "precision", "FPR", "CV err", "dmp_a", "dmp_e", "segment sports", "qualified"):
        assert word in result.output
    report = json.loads(out.read_text())
    assert sorted(report["ranking"]) == [f"dmp_{x}" for x in "abcde"]
    assert report["campaigns"] == 40 and report["folds"] == 5
    row = report["providers"]["dmp_b"]["segments"]["sports"]
    assert 0 <= row["mle"]["precision"] <= 1 and "cv_error" in row["least_squares"]
    reach = report["qualified_reach"]["providers"]["dmp_b"]
    assert 0 <= reach["qualified"] <= reach["labelled"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--segment", "nope"], "'nope' is not measured"),
        (["--target", "age in 18..24"], "--target needs --segment"),
        (["--segment", "sports", "--target", "cuntry:US"], "unknown field 'cuntry'"),
        (["--folds", "1"], "at least 2"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(population, tmp_path, args, message):
    out = tmp_path / "q.json"
    result = CliRunner().invoke(app, ["audience", "quality", str(population), "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_bad_directories_exit_2_and_write_nothing(tmp_path, population):
    runner = CliRunner()
    missing = runner.invoke(app, ["audience", "quality", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such directory" in missing.stderr
    empty = runner.invoke(app, ["audience", "quality", str(tmp_path)])
    assert empty.exit_code == 2 and "no campaign aggregates" in empty.stderr
    (tmp_path / "campaigns.json").write_text("{not json")
    broken = runner.invoke(app, ["audience", "quality", str(tmp_path)])
    assert broken.exit_code == 2 and "not JSON" in broken.stderr
    data = json.loads((population / "campaigns.json").read_text())
    data["campaigns"][3]["labels"]["dmp_a"][0] = -0.5
    (tmp_path / "campaigns.json").write_text(json.dumps(data))
    negative = runner.invoke(app, ["audience", "quality", str(tmp_path)])
    assert negative.exit_code == 2 and "labels shares must be finite and within [0, 1]" in negative.stderr
    no_population = runner.invoke(app, ["audience", "campaigns", str(tmp_path)])
    assert no_population.exit_code == 2 and "not a population directory" in no_population.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaigns.json"]
